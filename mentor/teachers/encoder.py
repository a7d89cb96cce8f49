"""A frozen sentence encoder (all-MiniLM-L6-v2) with a logistic head: the built-in text teacher.
Its encoding code is shared with the embedding student (mentor.students.embedding)."""

from __future__ import annotations

import numpy as np
import torch

from ..students.embedding import encode_texts, minilm_path, weights_digest
from .base import Teacher, TeacherAnswer, _sha
from .local import SklearnTeacher


class EncoderTeacher(Teacher):
    """Frozen pretrained sentence encoder (all-MiniLM-L6-v2) + logistic-regression head fit on A."""

    kind = "minilm"

    def __init__(self, head, n_classes: int, *, encoder_path: str | None = None, batch_size: int = 64,
                 cost_per_example: float = 0.0):
        self.encoder_path = str(encoder_path or minilm_path())
        self.head = SklearnTeacher(head, n_classes)
        self.n_classes, self.batch_size, self.cost_per_example = int(n_classes), batch_size, float(cost_per_example)
        self.fingerprint = _sha(weights_digest(self.encoder_path).encode(), self.head.fingerprint.encode())

    @staticmethod
    def embed(texts, *, encoder_path: str | None = None, batch_size: int = 64) -> np.ndarray:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return encode_texts(texts, encoder_path=encoder_path, batch_size=batch_size, device=device)

    @classmethod
    def fit(cls, texts, labels, *, n_classes: int, seed: int = 0, C: float = 10.0) -> "EncoderTeacher":
        from sklearn.linear_model import LogisticRegression
        emb = cls.embed(texts)
        head = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(emb, labels)
        return cls(head, n_classes)

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.head.predict_proba(self.embed(inputs, encoder_path=self.encoder_path, batch_size=self.batch_size))

    def answer_with_embeddings(self, inputs, ids=None) -> TeacherAnswer:
        """Probabilities plus the sentence embedding the head reads."""
        emb = self.embed(inputs, encoder_path=self.encoder_path, batch_size=self.batch_size)
        return TeacherAnswer(self.head.predict_proba(emb), {"embedding": np.asarray(emb, np.float32)})
