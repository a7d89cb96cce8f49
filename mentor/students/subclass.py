"""LELP (learning embedding linear projections): pseudo-subclasses from the teacher's embeddings.

With few classes a teacher's probabilities carry little about how it sees the data (two numbers
per example for a binary task). LELP splits each class into pseudo-subclasses along directions
of the teacher's embedding that its output ignores, and trains the student to reproduce the
teacher's distribution over those subclasses; the student's class probability is the sum of its
subclasses'. Reconstructed from the paper's description (Loo et al., 2024: linear subspaces of
the teacher's final-layer embeddings, found per class by PCA after removing the directions the
classifier reads, split into pseudo-subclasses): the exact subclass construction here is ours.

- `logit_directions` finds the directions of the embedding that change the teacher's
  probabilities, by least squares of its centred log-probabilities on the embedding: exact for
  any teacher whose last layer is linear, and it needs only what the store keeps (the teacher's
  head weights are not needed).
- `lelp_targets`: for each class c, PCA (on the pool examples the teacher assigns to c) of the
  embedding with those directions removed; k directions give 2k subclasses (each side of each
  direction). Target of subclass (c, j) = p_c · softmax_j(±projection / τ_sub): the class
  marginals are exactly the teacher's probabilities, so with k = 0 LELP is vanilla soft
  distillation.
- `SubclassHead` swaps the student's last linear layer for one with C·2k outputs; the student
  returns class log-probabilities (log-sum-exp of each class's subclass log-probabilities), so
  its label loss, prediction and ONNX export are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..losses import per_example_distillation


def logit_directions(embeddings, probs, *, tol: float = 1e-6) -> np.ndarray:
    """An orthonormal basis (d, r) of the embedding directions that change the teacher's
    probabilities: the row space of W in log p = W h + b + const(h), fit by least squares of the
    class-centred log-probabilities on [h, 1]."""
    h = np.asarray(embeddings, np.float64)
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1.0)
    if h.ndim != 2 or p.ndim != 2 or len(h) != len(p):
        raise DataError(f"logit_directions needs (n, d) embeddings and (n, C) probabilities; got {h.shape}, {p.shape}.")
    logp = np.log(p)
    y = logp - logp.mean(1, keepdims=True)  # the softmax's shift is not identifiable: drop it
    x = np.hstack([h - h.mean(0), np.ones((len(h), 1))])
    coef = np.linalg.lstsq(x, y - y.mean(0), rcond=None)[0][:-1]  # (d, C)
    u, s, _ = np.linalg.svd(coef, full_matrices=False)
    keep = s > tol * max(s.max(initial=0.0), 1e-300)
    return u[:, keep]


def lelp_targets(embeddings, probs, *, directions: int = 2, temperature: float = 1.0) -> tuple[np.ndarray, dict]:
    """Subclass targets (n, C·2k) with k = `directions`, classes major (class c owns columns
    c·2k … c·2k + 2k − 1), and what was fit (for the report). Rows of each class's block sum to
    the teacher's probability of that class."""
    h = np.asarray(embeddings, np.float64)
    p = np.asarray(probs, np.float64)
    n, c = p.shape
    k = int(directions)
    if k < 0:
        raise ConfigError(f"method_options.lelp_directions must be >= 0, got {k}.")
    if k == 0:
        return p.astype(np.float32), {"lelp_directions": 0, "lelp_subclasses": 1}
    basis = logit_directions(h, p)
    free = h - h.mean(0)
    free = free - (free @ basis) @ basis.T  # what the teacher's output does not read
    owner = p.argmax(1)
    scores = np.zeros((n, c, 2 * k))
    explained = []
    for cls in range(c):
        rows = free[owner == cls]
        if len(rows) < 2:  # no examples to find directions on: one even split
            explained.append(0.0)
            continue
        centre = rows.mean(0)
        _, s, vt = np.linalg.svd(rows - centre, full_matrices=False)
        dirs = vt[:k]  # (≤k, d)
        proj = (free - centre) @ dirs.T
        scale = proj[owner == cls].std(0)
        proj = proj / np.where(scale > 0, scale, 1.0)
        m = dirs.shape[0]
        scores[:, cls, 0:2 * m:2], scores[:, cls, 1:2 * m:2] = proj, -proj
        explained.append(float((s[:m] ** 2).sum() / max((s ** 2).sum(), 1e-300)))
    z = scores / float(temperature)
    z -= z.max(2, keepdims=True)
    split = np.exp(z)
    split /= split.sum(2, keepdims=True)
    targets = (p[:, :, None] * split).reshape(n, c * 2 * k)
    return targets.astype(np.float32), {"lelp_directions": k, "lelp_subclasses": 2 * k,
                                        "lelp_logit_directions": int(basis.shape[1]),
                                        "lelp_explained": [round(e, 4) for e in explained]}


def _last_linear_slot(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute name, layer) of the student's last nn.Linear (its output layer)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ConfigError(f"method lelp replaces the student's last linear layer by one with an output per subclass, "
                          f"and this student ({type(model).__name__}) has none; use a built-in student kind.")
    name, layer = found
    parent = model
    *path, attr = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    return parent, attr, layer


class SubclassHead(nn.Module):
    """A student whose output layer gives C·S subclass logits; `forward` returns the C class
    log-probabilities (log-sum-exp within each class of the subclass log-softmax) and keeps the
    subclass logits in `subclass_logits` for `LELPObjective`."""

    def __init__(self, base: nn.Module, n_classes: int, subclasses: int):
        super().__init__()
        parent, attr, last = _last_linear_slot(base)
        if last.out_features == n_classes * subclasses and subclasses > 1:
            pass  # already a unit per subclass: a shipped folder's base, rebuilt with its trained head
        elif last.out_features != n_classes:
            raise ConfigError(f"the student's last linear layer has {last.out_features} outputs, not the "
                              f"{n_classes} classes; method lelp needs a student ending in its class logits.")
        else:
            setattr(parent, attr, nn.Linear(last.in_features, n_classes * subclasses, bias=last.bias is not None))
        self.base, self.n_classes = base, int(n_classes)
        self.register_buffer("subclasses", torch.tensor(int(subclasses)))
        self.subclass_logits = None
        if hasattr(base, "predict_batch_size"):
            self.predict_batch_size = base.predict_batch_size

    def _classes(self, z):
        if self.training:
            self.subclass_logits = z
        logp = torch.log_softmax(z.float(), -1).view(z.shape[0], self.n_classes, -1)
        return torch.logsumexp(logp, -1)

    def forward(self, x):
        return self._classes(self.base(x))

    def logits(self, *inputs):
        """As forward, through the base's `logits` (a transformer student's (input_ids, attention_mask),
        which its ONNX export traces)."""
        return self._classes(self.base.logits(*inputs))

    def param_groups(self) -> list[dict]:
        return self.base.param_groups() if hasattr(self.base, "param_groups") else [{"params": list(self.parameters())}]


def subclass_head(n_classes: int, subclasses: int):
    """The `student_wrapper` of a LELP plan."""
    return lambda base: SubclassHead(base, n_classes, subclasses)


def subclasses_in_state(state_dict: dict) -> int | None:
    """The subclass count of saved `SubclassHead` weights (None: not a LELP student)."""
    s = state_dict.get("subclasses")
    return int(s) if s is not None and any(k.startswith("base.") for k in state_dict) else None


class LELPObjective:
    """The trainer's pool objective for LELP: the student's subclass logits against the subclass
    targets of the same pool rows (soft cross-entropy at train.temperature)."""

    def __init__(self, targets: np.ndarray, temperature: float = 1.0):
        self.targets = torch.as_tensor(np.asarray(targets, np.float32))
        self.temperature = float(temperature)
        self.model: SubclassHead | None = None

    def bind(self, model) -> None:
        if not isinstance(model, SubclassHead):
            raise ConfigError("method lelp trains a student with a subclass head (mentor.students.subclass."
                              "SubclassHead); wrap the student first (`mentor train` does this), or pick another method.")
        self.model = model

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        if self.model is None or self.model.subclass_logits is None:
            raise ConfigError("LELPObjective is not bound to a SubclassHead student; call bind(model) before training.")
        z = self.model.subclass_logits.float()
        idx = torch.as_tensor(pool_index, device=self.targets.device).long()
        return per_example_distillation(z, self.targets[idx].to(z.device), mode="soft",
                                        temperature=self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
