"""Teachers that run in this process: a torch module or a fitted scikit-learn classifier, and the
built-in ones trained on the labeled set A."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from ..checks import validate_probabilities
from ..errors import ConfigError
from ..students.models import Featurizer, build_model, default_featurizer
from ..students.rows import dense_rows, n_rows
from .base import Teacher, TeacherAnswer, _fingerprint_object, _sha, fingerprint_module


class TorchTeacher(Teacher):
    """A `torch.nn.Module` teacher. `output` says whether the module returns logits or probabilities;
    `featurizer` (optional) maps raw inputs to the float array the module expects."""

    kind = "torch"

    def __init__(self, module: nn.Module, n_classes: int, *, output: str = "logits", featurizer: Featurizer | None = None,
                 batch_size: int = 1024, device: str = "auto", cost_per_example: float = 0.0,
                 fingerprint: str | None = None):
        if output not in ("logits", "probs"):
            raise ConfigError(f"TorchTeacher output must be 'logits' or 'probs', got {output!r}")
        self.module, self.n_classes, self.output = module, int(n_classes), output
        self.featurizer, self.batch_size, self.device = featurizer, batch_size, device
        self.cost_per_example = float(cost_per_example)
        extra = _fingerprint_object(featurizer.__dict__) if featurizer is not None else ""
        self.fingerprint = fingerprint or _sha(fingerprint_module(module).encode(), extra.encode(), output.encode())

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self._run(inputs)[0]

    def answer_with_embeddings(self, inputs, ids=None) -> TeacherAnswer:
        """Probabilities plus the input of the module's last linear layer (its embedding)."""
        probs, emb = self._run(inputs, embed=True)
        return TeacherAnswer(probs, {"embedding": emb})

    @torch.no_grad()
    def _run(self, inputs, *, embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        from ..students.train import resolve_device
        x = self.featurizer.transform(inputs) if self.featurizer is not None else np.asarray(inputs, dtype=np.float32)
        dev = resolve_device(self.device)
        self.module.to(dev).eval()
        outs, embs = [], []
        hook = None
        if embed:
            last = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
            if not last:
                raise ConfigError(f"teacher.embeddings: true reads the input of the teacher's last linear layer, and "
                                  f"this {type(self.module).__name__} has none; set teacher.embeddings: false.")
            hook = last[-1].register_forward_hook(lambda m, i, o: embs.append(i[0].float().flatten(1).cpu().numpy()))
        try:
            for s in range(0, n_rows(x), self.batch_size):  # a sparse (TF-IDF) x is densified a batch at a time
                out = self.module(torch.as_tensor(dense_rows(x, s, s + self.batch_size), device=dev)).float()
                outs.append((torch.softmax(out, -1) if self.output == "logits" else out).cpu().numpy())
        finally:
            if hook is not None:
                hook.remove()
        probs = np.concatenate(outs) if outs else np.zeros((0, self.n_classes), np.float32)
        emb = (np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)) if embed else None
        return validate_probabilities(probs, self.n_classes, name=f"torch teacher {self.fingerprint}"), emb


class SklearnTeacher(Teacher):
    """A fitted scikit-learn classifier with `predict_proba`. Its `classes_` must be integer labels;
    columns are placed at those label positions, so a class the estimator never saw gets 0."""

    kind = "sklearn"

    def __init__(self, estimator, n_classes: int, *, featurizer: Featurizer | None = None,
                 cost_per_example: float = 0.0, fingerprint: str | None = None):
        if not hasattr(estimator, "predict_proba"):
            raise ConfigError(f"{type(estimator).__name__} has no predict_proba; use a probabilistic classifier "
                              "(e.g. LogisticRegression, HistGradientBoostingClassifier) or wrap it in "
                              "sklearn.calibration.CalibratedClassifierCV.")
        classes = np.asarray(getattr(estimator, "classes_", np.arange(n_classes)))
        if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= n_classes:
            raise ConfigError(f"the estimator's classes_ {classes[:10]} must be integer labels in [0, {n_classes - 1}]; "
                              "fit it on the encoded labels of the data set.")
        self.estimator, self.n_classes, self.featurizer = estimator, int(n_classes), featurizer
        self.classes_ = classes.astype(np.int64)
        self.cost_per_example = float(cost_per_example)
        self.fingerprint = fingerprint or _fingerprint_object((estimator, featurizer.__dict__ if featurizer else None))

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        x = self.featurizer.transform(inputs) if self.featurizer is not None else inputs
        p = np.asarray(self.estimator.predict_proba(x), dtype=np.float32)
        full = np.zeros((len(p), self.n_classes), np.float32)
        full[:, self.classes_] = p
        return validate_probabilities(full, self.n_classes, name=f"sklearn teacher {type(self.estimator).__name__}")


# ----------------------------------------------------------------------------------------------
# Teachers trained on the labeled set A (the honest protocol: the teacher never sees V or U labels)

def train_model_teacher(kind: str, features, labels, *, n_classes: int, data_kind: str, image_shape=None,
                        seed: int = 0, epochs: int = 60, hidden=(256, 128), device: str = "auto",
                        min_steps: int = 2000) -> Teacher:
    """Fit a built-in teacher on A. Kinds: 'mlp', 'cnn' (images), 'hgb' (gradient-boosted trees),
    'logistic', 'minilm' (frozen sentence encoder + logistic head, text)."""
    labels = np.asarray(labels, dtype=np.int64)
    if kind == "minilm":
        from .encoder import EncoderTeacher
        if data_kind != "text":
            raise ConfigError(f"teacher 'minilm' is a sentence encoder and reads text, but this data is {data_kind}; "
                              "use teacher kind mlp, cnn, cnn1d, hgb or logistic.")
        return EncoderTeacher.fit(features, labels, n_classes=n_classes, seed=seed)
    if data_kind == "text":
        raise ConfigError(f"teacher {kind!r} cannot read text; use teacher kind 'minilm' for text data.")
    feat = Featurizer(default_featurizer(kind, data_kind)).fit(features)
    x = feat.transform(features)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        est = HistGradientBoostingClassifier(random_state=seed).fit(x, labels)
        return SklearnTeacher(est, n_classes, featurizer=feat)
    from ..students.train import TrainConfig, train_student
    torch.manual_seed(seed)
    model = build_model(kind, in_features=x.shape[1], n_classes=n_classes, image_shape=image_shape,
                        hidden=tuple(hidden), dropout=0.1)  # recorded in teacher.build below
    train_student(model, x, labels, config=TrainConfig(epochs=epochs, min_steps=min_steps, seed=seed, device=device,
                                                       weight_decay=1e-4))
    model.cpu()
    teacher = TorchTeacher(model, n_classes, featurizer=feat, device=device)
    teacher.kind = kind
    teacher.build = {"kind": kind, "in_features": int(x.shape[1]), "n_classes": int(n_classes), "hidden": list(hidden),
                     "image_shape": list(image_shape) if image_shape is not None else None, "dropout": 0.1}
    return teacher
