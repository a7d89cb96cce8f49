"""Built-in model architectures (used as students and as teachers trained on A), and the
featurizers that turn a data set's raw inputs into float tensors (or token ids) for them.

Any `torch.nn.Module` mapping a batch (n, d) to logits (n, C) can replace these; the transformer
student lives in `hf.py`.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn

from ..errors import ConfigError


class MLP(nn.Module):
    """Fully connected ReLU network; `hidden=()` gives multinomial logistic regression."""

    def __init__(self, in_features: int, n_classes: int, hidden: tuple[int, ...] = (64,), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for small grey images; takes flattened input."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, channels: tuple[int, int] = (32, 64),
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if min(h, w) >= 8 else nn.Identity(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 16, n_classes))

    def forward(self, x):
        return self.head(self.features(x.view(x.shape[0], *self.image_shape)))


class CNN1D(nn.Module):
    """Two 1-d conv blocks and a linear head for signals (n, length), e.g. MNIST-1D."""

    def __init__(self, length: int, n_classes: int, channels: tuple[int, int] = (32, 64), dropout: float = 0.0):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(c1, c2, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(8))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 8, n_classes))

    def forward(self, x):
        return self.head(self.features(x.view(x.shape[0], 1, -1)))


def build_model(kind: str, *, in_features: int, n_classes: int, image_shape=None,
                hidden: tuple[int, ...] = (64,), dropout: float = 0.0) -> nn.Module:
    """Model by name: 'logistic', 'mlp', 'cnn' (images only), 'cnn1d' (signals), 'tfidf' (= logistic on TF-IDF)."""
    if kind in ("logistic", "tfidf"):
        return MLP(in_features, n_classes, hidden=())
    if kind == "mlp":
        return MLP(in_features, n_classes, hidden=tuple(hidden), dropout=dropout)
    if kind == "cnn":
        if image_shape is None:
            raise ConfigError("model 'cnn' needs image data (a data set with image_shape); use 'mlp' for tabular data.")
        return SmallCNN(tuple(image_shape), n_classes, dropout=dropout)
    if kind == "cnn1d":
        return CNN1D(in_features, n_classes, dropout=dropout)
    raise ConfigError(f"unknown model kind {kind!r}; choose one of logistic, mlp, cnn, cnn1d, tfidf, "
                      "or pass your own torch.nn.Module through the Python API.")


class Featurizer:
    """Raw inputs → float32 matrix (int64 token ids for 'tokens'). Fitted on inputs only (never
    labels), so fitting on the unlabeled pool is legitimate. Kinds: 'identity', 'standardize',
    'tfidf', 'tokens' (a Hugging Face tokenizer folder, ids cut and padded to max_length)."""

    def __init__(self, kind: str = "identity", max_features: int = 5000, *, tokenizer: str | None = None,
                 max_length: int = 128):
        self.kind = kind
        self.max_features = max_features
        self.tokenizer = tokenizer
        self.max_length = max_length

    def fit(self, inputs) -> "Featurizer":
        if self.kind == "tokens":  # nothing to learn: the tokenizer is read from its folder
            from .hf import load_tokenizer
            if self.tokenizer is None:
                raise ConfigError("featurizer 'tokens' needs a tokenizer folder (student.tokenizer or student.encoder).")
            self.tokenizer_ = load_tokenizer(self.tokenizer)
        elif self.kind == "standardize":
            x = np.asarray(inputs, dtype=np.float64)
            self.mean_ = x.mean(axis=0)
            self.scale_ = np.where(x.std(axis=0) > 1e-8, x.std(axis=0), 1.0)
        elif self.kind == "tfidf":
            self.vectorizer_ = _tfidf(self.max_features).fit(list(inputs))
        elif self.kind != "identity":
            raise ConfigError(f"unknown featurizer {self.kind!r}; use identity, standardize, tfidf or tokens.")
        return self

    def transform(self, inputs):
        """float32 rows (TF-IDF stays a scipy CSR matrix, see mentor.students.rows, never densified
        whole); int64 token ids for `tokens`."""
        if self.kind == "tokens":
            from .hf import encode
            return encode(self.tokenizer_, inputs, self.max_length)
        if self.kind == "standardize":
            return ((np.asarray(inputs, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)
        if self.kind == "tfidf":
            return self.vectorizer_.transform(list(inputs)).astype(np.float32).tocsr()
        return np.asarray(inputs, dtype=np.float32)

    def state_dict(self) -> dict:
        """The learned state as plain data (a vocabulary of str -> int, float64 arrays), so it is
        saved as JSON and tensors and never pickled: loading it cannot run code."""
        state = {"kind": self.kind, "max_features": int(self.max_features)}
        if self.kind == "tokens":
            state.update(tokenizer=str(self.tokenizer), max_length=int(self.max_length))
        elif self.kind == "standardize":
            state.update(mean_=np.asarray(self.mean_, np.float64), scale_=np.asarray(self.scale_, np.float64))
        elif self.kind == "tfidf":
            state.update(vocabulary_={str(k): int(v) for k, v in self.vectorizer_.vocabulary_.items()},
                         idf_=np.asarray(self.vectorizer_.idf_, np.float64))
        return state

    @classmethod
    def from_state_dict(cls, state: dict, **embedding_options):
        """The inverse of `state_dict`; arrays may come back as numpy arrays or torch tensors. An
        'embedding' state gives a `mentor.students.embedding.EmbeddingFeaturizer` (options: cache_dir, device)."""
        if state.get("kind") == "embedding":
            from .embedding import EmbeddingFeaturizer
            return EmbeddingFeaturizer.from_state_dict(state, **embedding_options)
        feat = cls(str(state["kind"]), int(state["max_features"]), tokenizer=state.get("tokenizer"),
                   max_length=int(state.get("max_length", 128)))
        if feat.kind == "tokens":
            feat.fit(None)
        elif feat.kind == "standardize":
            feat.mean_, feat.scale_ = _float64(state["mean_"]), _float64(state["scale_"])
        elif feat.kind == "tfidf":
            feat.vectorizer_ = _tfidf(feat.max_features, vocabulary={str(k): int(v) for k, v in
                                                                     state["vocabulary_"].items()})
            feat.vectorizer_.idf_ = _float64(state["idf_"])
        elif feat.kind != "identity":
            raise ConfigError(f"unknown featurizer {feat.kind!r}; use identity, standardize, tfidf or tokens.")
        return feat

    @property
    def n_features(self) -> int | None:
        if self.kind == "tokens":
            return int(self.max_length)
        if self.kind == "tfidf":
            return len(self.vectorizer_.vocabulary_)
        if self.kind == "standardize":
            return len(self.mean_)
        return None


def _tfidf(max_features: int, vocabulary: dict | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(max_features=max_features, sublinear_tf=True, ngram_range=(1, 2), min_df=2,
                           vocabulary=vocabulary)


def _float64(a) -> np.ndarray:
    return np.array(a.numpy() if hasattr(a, "numpy") else a, dtype=np.float64)


def default_featurizer(kind: str, data_kind: str) -> str:
    """Text needs TF-IDF (or the embedding student's encoder, or token ids for a transformer); tabular
    data is standardised; images are already in [0, 1]."""
    if kind == "embedding":
        return "embedding"
    if kind == "transformer":
        return "tokens"
    if data_kind == "text":
        return "tfidf"
    if data_kind == "tabular":
        return "standardize"
    return "identity"
