"""Transformer students (student.kind: transformer) and the trainer features they need, on a tiny
randomly initialised BERT with a 70-word tokenizer (seconds on CPU). The real MiniLM student is
measured by `python -m mentor.bench.transformer_student`, not here."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from mentor.config import load_config, parse_config
from mentor.errors import ConfigError, DataError
from mentor.methods import METHODS
from mentor.pipeline import run
from mentor.students import hf
from mentor.students.models import MLP, Featurizer
from mentor.students.train import TrainConfig, lr_factor, predict_proba, train_student

MENTOR = [sys.executable, "-m", "mentor.cli"]
WORDS = [f"w{i}" for i in range(60)]
N_CLASSES = 3


def _tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def _encoder_folder(folder: Path, vocab_size: int) -> Path:
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT folder (encoder + tokenizer), a 3-class text data file and a teacher file."""
    root = tmp_path_factory.mktemp("hf")
    tok = _tokenizer()
    enc = _encoder_folder(root / "encoder", len(tok))
    tok.save_pretrained(enc)
    rng = np.random.default_rng(0)
    n = 360
    y = rng.integers(0, N_CLASSES, n)
    texts = [" ".join([f"w{c * 10 + rng.integers(0, 10)}" for _ in range(rng.integers(2, 5))]
                      + list(rng.choice(WORDS[30:], rng.integers(3, 12)))) for c in y]
    ids = [f"t{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts, "label": y}), root / "data.parquet")
    probs = np.full((n, N_CLASSES), 0.1)
    probs[np.arange(n), np.where(rng.uniform(size=n) < 0.85, y, (y + 1) % N_CLASSES)] = 0.8
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in probs]}), root / "teacher.parquet")
    return {"root": root, "encoder": enc, "texts": texts, "labels": y}


def _doc(tiny, out, **over):
    doc = {"output_dir": str(out), "data": {"path": str(tiny["root"] / "data.parquet")},
           "split": {"n_labeled": 40, "n_val": 100, "n_test": 80},
           "teacher": {"kind": "file", "path": str(tiny["root"] / "teacher.parquet")},
           "student": {"kind": "transformer", "encoder": str(tiny["encoder"]), "max_length": 16},
           "train": {"epochs": 2, "min_steps": 0, "batch_size": 16, "lr": 1e-3}}
    for k, v in over.items():
        doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
    return doc


def _student(tiny, **kw):
    torch.manual_seed(0)
    return hf.build_transformer_student(tiny["encoder"], N_CLASSES, max_length=16, **kw)


def _ids(tiny, rows=slice(0, 48)):
    return hf.encode(hf.load_tokenizer(tiny["encoder"]), tiny["texts"][rows], 16)


# ------------------------------------------------------------------------------------- pipeline

@pytest.mark.parametrize("method", ["vanilla-soft", "auto"])
def test_pipeline_trains_a_transformer_student(tiny, tmp_path, method):
    m = run(parse_config(_doc(tiny, tmp_path / "run", method=method,  # auto trains 5 students: 1 epoch each
                              train={"epochs": 1 if method == "auto" else 2})))
    assert m["test_accuracy"] > 0.5 and m["labeled_only"]["accuracy"] is not None  # 3 classes: chance is 1/3
    assert m["method"] == method and (method != "auto" or m["train_info"]["auto"]["chosen"])
    assert (tmp_path / "run" / "student.pt").exists()
    if method == "vanilla-soft":  # the shipped folder: Hugging Face format, read back with the same probabilities
        from mentor.pipeline import load_student, open_run
        from mentor.serve import FolderPredictor
        from mentor.students.train import predict_proba
        folder = tmp_path / "run" / "model"
        assert (folder / "config.json").exists() and (folder / "head.safetensors").exists()
        texts = np.asarray(tiny["texts"][:10], dtype=object)
        model, feat, _ = load_student(open_run(tmp_path / "run"))
        want = predict_proba(model, feat.transform(texts), device="cpu")
        np.testing.assert_allclose(FolderPredictor(folder).predict_proba(texts), want, atol=1e-5)
        # and its ONNX graph (token ids + mask), checked on V, timed, and used by serve/predict --runtime onnx
        import json
        rec = json.loads((folder / "mentor_student.json").read_text())
        assert rec["onnx"]["exported"] and rec["onnx"]["max_abs_diff"] <= 1e-4 and (folder / "model.onnx").is_file()
        assert set(rec["onnx"]["inputs"]) == {"input_ids", "attention_mask"}
        assert rec["latency_ms_per_example"]["onnx_b64_ms"] > 0
        np.testing.assert_allclose(FolderPredictor(folder, "onnx").predict_proba(texts), want, atol=1e-4)
        from mentor.students.export import format_for
        pad = rec["student"]["args"]["pad_token_id"]
        ids = feat.transform(np.asarray(tiny["texts"], dtype=object))  # right-padded to max_length (16)
        ids = ids[np.argsort((ids != pad).sum(1))[:5]]  # the five shortest texts
        fed = format_for("transformer").feed(rec["student"]["args"])(ids)  # cut to the longest row's width
        longest = int((ids != pad).sum(1).max())
        assert fed["input_ids"].shape == fed["attention_mask"].shape == (5, longest) and longest < ids.shape[1]
        from mentor.students.export import predict_file
        data = tmp_path / "new.parquet"
        pq.write_table(pa.table({"id": [f"n{i}" for i in range(10)], "text": list(texts)}), data)
        predict_file(folder, data, tmp_path / "p.parquet", runtime="onnx", batch_size=4)
        got = pq.read_table(tmp_path / "p.parquet").to_pandas()
        np.testing.assert_allclose(got[[f"prob_{c}" for c in range(N_CLASSES)]].to_numpy(), want, atol=1e-4)


ALL_BUT = ("auto", "lelp", "vanilla-soft")  # tested above and below (lelp needs a teacher's embeddings)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ALL_BUT])
def test_every_method_trains_a_transformer_student(tiny, tmp_path, method):
    """Each method's objective and weights work with a student that takes int64 token ids and has
    its own parameter groups: one epoch, finite probabilities that sum to one."""
    m = run(parse_config(_doc(tiny, tmp_path / "run", method=method, baseline=False, train={"epochs": 1},
                              export={"model_folder": False})))
    assert m["method"] == method and 0 <= m["test_accuracy"] <= 1
    from mentor.pipeline import open_run, student_probs
    ctx = open_run(tmp_path / "run")
    p = student_probs(ctx, "student", ctx.splits.test)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-5)


@pytest.mark.filterwarnings("ignore:train.amp_on_cpu is set")
@pytest.mark.parametrize("method", ["vanilla-soft", "dho"])
def test_a_transformer_student_trains_under_bfloat16_autocast_as_in_float32(tiny, tmp_path, method):
    """train.amp_on_cpu (the autocast call train.amp makes on CUDA): the encoder's attention and the
    head (and dho's second head) run in bfloat16 and the student matches the float32 one up to rounding."""
    from mentor.pipeline import open_run, student_probs
    probs, dtypes = {}, []
    for amp in (False, True):
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda mod, _, out: dtypes.append((amp, out.dtype)) if isinstance(mod, torch.nn.Linear) and mod.training
            else None)
        try:
            run(parse_config(_doc(tiny, tmp_path / f"run-{amp}", method=method, baseline=False,
                                  train={"amp_on_cpu": amp}, export={"model_folder": False})))
        finally:
            hook.remove()
        ctx = open_run(tmp_path / f"run-{amp}")
        probs[amp] = student_probs(ctx, "student", ctx.splits.test)
    assert {d for a, d in dtypes if a} == {torch.bfloat16} and {d for a, d in dtypes if not a} == {torch.float32}
    assert np.isfinite(probs[True]).all() and np.abs(probs[True] - probs[False]).max() < 0.01
    assert (probs[True].argmax(1) == probs[False].argmax(1)).mean() >= 0.95
    assert not np.array_equal(probs[True], probs[False])  # so autocast changed the arithmetic


@pytest.mark.parametrize("method", ["dho", "lelp"])
def test_a_wrapped_transformer_student_ships_as_a_hugging_face_folder(tiny, tmp_path, method):
    """dho (a second head) and lelp (a unit per subclass) train the transformer inside a wrapper; the
    folder holds the encoder in save_pretrained format plus the wrapper's tensors, rebuilds it in
    torch and runs its ONNX graph (before: AttributeError, 'DualHead' object has no attribute
    'encoder', after the student had trained). lelp needs a teacher's embeddings: the MiniLM teacher."""
    from mentor.pipeline import load_student, open_run
    from mentor.serve import FolderPredictor
    over = {"teacher": {"kind": "minilm", "embeddings": True}} if method == "lelp" else {}
    run(parse_config(_doc(tiny, tmp_path / "run", method=method, train={"epochs": 1}, **over)))
    folder = tmp_path / "run" / "model"
    import json
    rec = json.loads((folder / "mentor_student.json").read_text())
    assert rec["student"]["kind"] == {"dho": "dual-head", "lelp": "subclass"}[method]
    assert rec["student"]["args"]["base_kind"] == "transformer" and (folder / "config.json").is_file()
    assert rec["onnx"]["exported"] and rec["onnx"]["max_abs_diff"] <= 1e-4
    card = (folder / "README.md").read_text()
    assert card.startswith("# data classifier: a `transformer` student")
    assert {"dho": "with DHO's second head", "lelp": "with an output per LELP subclass"}[method] in card
    texts = np.asarray(tiny["texts"][:12], dtype=object)
    model, feat, _ = load_student(open_run(tmp_path / "run"))
    want = predict_proba(model, feat.transform(texts), device="cpu")
    np.testing.assert_allclose(FolderPredictor(folder).predict_proba(texts), want, atol=1e-6)
    np.testing.assert_allclose(FolderPredictor(folder, "onnx").predict_proba(texts), want, atol=1e-4)
    (folder / "wrapper.safetensors").unlink()  # a folder copied without the wrapper's file: named, not a traceback
    from mentor.students.export import load_student_folder
    with pytest.raises(DataError, match="wrapper weights file .*wrapper.safetensors is missing"):
        load_student_folder(folder)


def test_transformer_student_trains_from_disk(tiny, tmp_path):
    """train.data_path: stream with a transformer student: the pool is written as int64 token ids
    and read back a buffer at a time; the student learns as in memory (chance is 1/3)."""
    m = run(parse_config(_doc(tiny, tmp_path / "run", method="slam", method_options={"min_val": 20},
                              train={"epochs": 2, "data_path": "stream"})))
    assert m["train_info"]["data_path"] == "stream" and m["test_accuracy"] > 0.5
    pool_file = next((tmp_path / "run" / "stream").rglob("pool.parquet"))
    kind = pq.ParquetFile(pool_file).schema_arrow.field("features").type
    assert kind.value_type == pa.int64() and kind.list_size == 16  # max_length token ids


def test_transformer_defaults_are_resolved_and_visible(tiny, tmp_path):
    cfg = parse_config({"data": {"name": "fortunes"}, "student": {"kind": "transformer"}})
    t = cfg.train
    assert (t.lr, t.epochs, t.min_steps, t.batch_size, t.schedule, t.warmup_fraction) == (5e-5, 3, 100, 32, "linear", 0.1)
    assert cfg.student.head_lr == 1e-3
    small = parse_config({}).train  # the other students keep the old defaults: their results do not change
    assert (small.lr, small.epochs, small.min_steps, small.schedule, small.warmup_fraction) == (
        1e-3, 30, 2000, "constant", 0.0)
    assert parse_config({"student": {"kind": "transformer"}, "train": {"lr": 3e-5}}).train.lr == 3e-5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "fortunes"}, "student": {"kind": "transformer"}}))
    shown = subprocess.run(MENTOR + ["check-config", str(path)], capture_output=True, text=True).stdout
    assert "lr: 5.0e-05" in shown and "schedule: linear" in shown and "warmup_fraction: 0.1" in shown


def test_config_paths_relative_to_the_config_file(tiny, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "fortunes"}, "student": {"kind": "transformer",
                                                                              "encoder": "models/enc"}}))
    assert load_config(path).student.encoder == str((tmp_path / "models" / "enc").resolve())


def test_old_run_folder_still_matches_its_config(tmp_path):
    """A config.yaml written before train.schedule etc. existed is the same run, not another config."""
    from mentor.pipeline import claim_output_dir
    cfg = parse_config({"output_dir": str(tmp_path), "data": {"name": "digits"}})
    old = cfg.model_dump(mode="json")
    for key in ("grad_accum", "schedule", "warmup_fraction", "data_path", "select_on", "patience", "amp_on_cpu"):
        del old["train"][key]
    for key in ("encoder", "tokenizer", "max_length", "freeze_layers", "head_lr", "head", "embedding_cache",
                "encoder_batch_size", "image_size", "augment"):
        del old["student"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    claim_output_dir(cfg)  # no "holds a run with another config"
    from mentor.config import without_added_defaults  # checkpoint keys hash what older versions hashed
    assert without_added_defaults(cfg.train.model_dump(), "train") == old["train"]
    assert without_added_defaults(cfg.student.model_dump(), "student") == old["student"]


# ------------------------------------------------------------------------------------- trainer

@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_matches_the_formula(schedule):
    total, warm = 20, 4
    got = [lr_factor(s, total, warmup_steps=warm, schedule=schedule) for s in range(total)]
    assert got[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    p = [(s - warm) / (total - warm) for s in range(warm, total)]
    want = {"constant": [1.0] * len(p), "linear": [1 - x for x in p],
            "cosine": [0.5 * (1 + math.cos(math.pi * x)) for x in p]}[schedule]
    assert got[warm:] == pytest.approx(want)
    assert min(got) > 0


def test_trainer_applies_the_schedule_to_the_optimiser():
    """The lr each optimiser step used, read back from Adam, follows lr_factor (warmup 25%, linear)."""
    model = MLP(4, 2, hidden=())
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(None))
    x, y = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32), np.arange(32) % 2
    lrs = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **kw)

    torch.optim.Adam.step = spy
    try:
        train_student(model, x, y, config=TrainConfig(epochs=2, min_steps=0, batch_size=4, lr=0.1,
                                                      schedule="linear", warmup_fraction=0.25))
    finally:
        torch.optim.Adam.step = orig
    assert lrs == pytest.approx([0.1 * lr_factor(s, 16, warmup_steps=4, schedule="linear") for s in range(16)])


def test_head_learns_at_head_lr(tiny):
    """student.head_lr: the new head's group runs at head_lr_scale × lr through warmup and decay."""
    model = _student(tiny, head_lr_scale=20.0)
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return orig(self, *a, **kw)

    torch.optim.Adam.step = spy
    try:
        train_student(model, _ids(tiny), tiny["labels"][:48], config=TrainConfig(
            epochs=1, min_steps=0, batch_size=16, lr=1e-4, schedule="linear", warmup_fraction=0.3))
    finally:
        torch.optim.Adam.step = orig
    assert len(seen) == 3 and all(h == pytest.approx(20 * e) for e, h in seen)
    assert parse_config({"student": {"kind": "transformer"}}).student.head_lr == 1e-3


def test_grad_accum_equals_the_big_batch():
    """batch 4 × grad_accum 2 takes the same steps as batch 8 (same order, mean over the 8 examples)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    xu, tu = rng.normal(size=(30, 5)).astype(np.float32), rng.dirichlet(np.ones(3), 30).astype(np.float32)
    weights = []
    for bs, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        m = MLP(5, 3, hidden=())
        cfg = TrainConfig(epochs=3, min_steps=0, batch_size=bs, grad_accum=accum, lr=0.05, schedule="cosine",
                          warmup_fraction=0.2)
        train_student(m, x, y, x_pool=xu, teacher_probs=tu, config=cfg)
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-5)
    from mentor.students.train import epochs_for, steps_per_epoch
    cfg = TrainConfig(batch_size=8, grad_accum=2, epochs=1, min_steps=20)
    assert steps_per_epoch(70, cfg) == 5 and epochs_for(70, cfg) == 4  # min_steps counts optimiser steps


def test_integer_inputs_stay_integer():
    """Token ids reach the model as int64 (the trainer used to cast every input to float32)."""
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(50, 3)

        def forward(self, x):
            assert x.dtype == torch.int64
            return self.emb(x)

    x = np.random.default_rng(0).integers(0, 50, (24, 6))
    y = np.arange(24) % 3
    model = Bag()
    train_student(model, x, y, x_pool=x[:10], teacher_probs=np.full((10, 3), 1 / 3, np.float32),
                  config=TrainConfig(epochs=1, min_steps=0, batch_size=8))
    assert predict_proba(model, x).shape == (24, 3)


def test_frozen_layers_stay_bit_identical(tiny):
    model = _student(tiny, freeze=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _ids(tiny)
    train_student(model, x, tiny["labels"][:48], config=TrainConfig(epochs=2, min_steps=0, batch_size=16, lr=1e-2))
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))]
    trained = [k for k in before if k.startswith(("encoder.encoder.layer.1.", "head."))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained)


def test_freeze_more_layers_than_the_encoder_has(tiny):
    with pytest.raises(ConfigError, match="has 2 layers; use at most 2"):
        _student(tiny, freeze=3)
    model = _student(tiny, freeze=2)  # the whole encoder: only the head trains
    assert [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("head.", "encoder.pooler"))
            ] == []


# ------------------------------------------------------------------------------------- saving and ONNX

def test_save_and_load_give_identical_probabilities(tiny, tmp_path):
    model = _student(tiny)
    x = _ids(tiny)
    train_student(model, x, tiny["labels"][:48], config=TrainConfig(epochs=1, min_steps=0, batch_size=16))
    want = predict_proba(model, x)
    folder = hf.save_hf_folder(model, tiny["encoder"], tmp_path / "shipped", extra={"classes": ["a", "b", "c"]})
    loaded, tok, meta = hf.load_hf_folder(folder)
    assert meta["classes"] == ["a", "b", "c"] and meta["pooling"] == "mean"
    np.testing.assert_array_equal(predict_proba(loaded, hf.encode(tok, tiny["texts"][:48], meta["max_length"])), want)
    from transformers import AutoModel  # the folder is plain Hugging Face format for the encoder
    assert AutoModel.from_pretrained(str(folder), local_files_only=True).config.hidden_size == 16


def test_onnx_export_matches_torch(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _student(tiny)
    path = hf.export_onnx_hf(model, tmp_path / "model.onnx")
    x = _ids(tiny)  # other batch size and padding than the export example
    assert hf.check_onnx_hf(path, model, x) < 1e-4


def test_featurizer_state_round_trip(tiny):
    feat = Featurizer("tokens", tokenizer=str(tiny["encoder"]), max_length=16).fit(tiny["texts"])
    again = Featurizer.from_state_dict(feat.state_dict())
    x = again.transform(tiny["texts"][:5])
    assert x.dtype == np.int64 and x.shape == (5, 16) and np.array_equal(x, feat.transform(tiny["texts"][:5]))
    assert (x[:, 0] == 2).all()  # [CLS] first; right-padded with [PAD] = 0
    assert x[0, -1] == 0


# ------------------------------------------------------------------------------------- bad input

def test_encoder_folder_without_config(tiny, tmp_path):
    (tmp_path / "enc").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        hf.check_encoder_folder(tmp_path / "enc")
    (tmp_path / "enc" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no weights"):
        hf.check_encoder_folder(tmp_path / "enc")
    with pytest.raises(DataError, match="no mentor_student.json"):
        hf.load_hf_folder(tmp_path / "enc")


def test_tokenizer_that_does_not_match_the_encoder(tiny, tmp_path):
    big = _tokenizer([f"v{i}" for i in range(200)])
    big.save_pretrained(tmp_path / "big-tok")
    with pytest.raises(ConfigError, match="204 tokens but the encoder .* has 64 embeddings"):
        hf.build_transformer_student(tiny["encoder"], 3, tokenizer_path=tmp_path / "big-tok")


@pytest.mark.parametrize("case", ["no-config", "image-data"])
def test_cli_bad_input_exits_2_naming_the_fix(tiny, tmp_path, case):
    if case == "no-config":
        (tmp_path / "empty").mkdir()
        doc, fix = _doc(tiny, tmp_path / "run", student={"encoder": str(tmp_path / "empty")}), "has no config.json"
    else:
        doc = {"output_dir": str(tmp_path / "run"), "data": {"name": "digits"}, "split": {"n_labeled": 50},
               "student": {"kind": "transformer", "encoder": str(tiny["encoder"])}}
        fix = "reads text, but 'digits' is image data; use student.kind"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = subprocess.run(MENTOR + ["run", str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and fix in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run" / "store").exists()  # refused before any teacher call


@pytest.mark.parametrize("case", ["tokenizer", "max-length"])
def test_mismatched_folders_fail_before_the_teacher_is_paid(tiny, tmp_path, case):
    from mentor.pipeline import prepare
    if case == "tokenizer":
        _tokenizer([f"v{i}" for i in range(200)]).save_pretrained(tmp_path / "big-tok")
        doc, fix = _doc(tiny, tmp_path / "run", student={"tokenizer": str(tmp_path / "big-tok")}), "do not belong"
    else:
        doc, fix = _doc(tiny, tmp_path / "run", student={"max_length": 100}), "max_length to at most 64"
    with pytest.raises(ConfigError, match=fix):
        prepare(parse_config(doc))


def test_freeze_layers_needs_a_transformer():
    with pytest.raises(ConfigError, match="freeze_layers"):
        parse_config({"student": {"kind": "mlp", "freeze_layers": 2}})


def test_float_input_to_a_transformer(tiny):
    with pytest.raises(DataError, match="token ids"):
        _student(tiny)(torch.zeros(2, 16))
