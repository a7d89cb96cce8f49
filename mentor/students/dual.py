"""DHO (dual-head optimisation): one backbone, a head for the labels and a head for the teacher.

The label head learns from A's true labels only, the teacher head from the teacher's targets on
the pool only, so neither head's gradient fights the other's (the conflict DHO was proposed to
remove); the shared backbone learns from both. At inference the two heads' probabilities are
blended, `(1 − w)·softmax(label head) + w·softmax(teacher head)`, with w chosen on V after training
(w = 0 is the label head alone, 1 the teacher head alone).

`DualHead` wraps any student whose last `nn.Linear` is its output layer (every built-in kind): a
forward hook reads that layer's input (the penultimate features) and a second linear layer of
the same shape maps them to the teacher head's logits, so the student's own `forward` is untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..losses import per_example_distillation

BLEND_GRID = 21  # w in {0, 0.05, ..., 1}


def blend_probs(label_probs, teacher_probs, w: float):
    """(1 − w)·label_probs + w·teacher_probs: arrays or tensors of probabilities (rows sum to 1)."""
    return (1.0 - w) * label_probs + w * teacher_probs


def choose_blend(label_probs_val, teacher_probs_val, y_val, grid: int = BLEND_GRID) -> dict:
    """The blend weight with the highest accuracy on V (ties: the lower mean NLL, then the smaller
    w), from the two heads' probabilities on V and V's labels; with every candidate's V numbers."""
    a, b = np.asarray(label_probs_val, np.float64), np.asarray(teacher_probs_val, np.float64)
    y = np.asarray(y_val, np.int64)
    if a.shape != b.shape or a.ndim != 2 or len(y) != len(a) or len(y) == 0:
        raise DataError(f"choose_blend needs two (n_val, C) probability arrays and n_val labels, n_val >= 1; got "
                        f"{a.shape}, {b.shape} and {len(y)} labels.")
    table = []
    for w in np.linspace(0.0, 1.0, grid):
        p = blend_probs(a, b, w)
        table.append({"w": float(w), "val_accuracy": float((p.argmax(1) == y).mean()),
                      "val_nll": float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())})
    best = min(table, key=lambda r: (-r["val_accuracy"], r["val_nll"], r["w"]))
    return {"dho_blend": best["w"], "dho_val_accuracy": best["val_accuracy"],
            "dho_label_head_val_accuracy": table[0]["val_accuracy"],
            "dho_teacher_head_val_accuracy": table[-1]["val_accuracy"]}


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"method dho adds a second head beside the student's last linear layer, and this student "
                          f"({type(model).__name__}) has none; use a built-in student kind or one ending in nn.Linear.")
    return linears[-1]


class DualHead(nn.Module):
    """A student plus a teacher head on its penultimate features; see the module docstring.

    Training mode: returns the label head's logits and keeps the teacher head's in
    `teacher_logits` for `DHOObjective`. Eval mode: returns log of the blended probabilities, so
    softmax of the output is the blend and every caller of `predict_proba` gets it unchanged."""

    def __init__(self, base: nn.Module, blend: float = 0.5):
        super().__init__()
        self.base = base
        last = _last_linear(base)
        self.teacher_head = nn.Linear(last.in_features, last.out_features)
        self.register_buffer("blend", torch.tensor(float(blend)))
        self._features = None
        self.teacher_logits = None
        last.register_forward_hook(self._keep_features)
        if hasattr(base, "predict_batch_size"):
            self.predict_batch_size = base.predict_batch_size

    def _keep_features(self, module, inputs, output):
        self._features = inputs[0]

    def heads(self, *inputs, call=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(label head logits, teacher head logits) of the base called on `inputs` (by `call`, default
        its forward)."""
        label = (call or self.base)(*inputs)
        features, self._features = self._features, None
        return label, self.teacher_head(features)

    def _output(self, label, teacher):
        if self.training:
            self.teacher_logits = teacher
            return label
        p = blend_probs(torch.softmax(label.float(), -1), torch.softmax(teacher.float(), -1), self.blend)
        return torch.log(p.clamp_min(1e-30))

    def forward(self, x):
        return self._output(*self.heads(x))

    def logits(self, *inputs):
        """As forward, through the base's `logits`: a transformer student's (input_ids, attention_mask)
        path, which its ONNX export traces."""
        return self._output(*self.heads(*inputs, call=self.base.logits))

    def param_groups(self) -> list[dict]:
        """The base's groups (e.g. a transformer's head lr scale); the teacher head joins the group of
        the label head."""
        if not hasattr(self.base, "param_groups"):
            return [{"params": list(self.parameters())}]
        groups = [dict(g) for g in self.base.param_groups()]
        head = _last_linear(self.base).weight
        home = next((g for g in groups if any(p is head for p in g["params"])), groups[-1])
        home["params"] = list(home["params"]) + list(self.teacher_head.parameters())
        return groups

    @torch.no_grad()
    def fit_blend(self, x_val, y_val, *, device: str = "auto") -> dict:
        """Choose the blend weight on V (`choose_blend`) and keep it; returns what was chosen."""
        from .train import as_inputs, resolve_device
        from .rows import dense_rows, is_sparse, n_rows
        dev = resolve_device(device)
        self.to(dev).eval()
        label, teacher = [], []
        for s in range(0, n_rows(x_val), 4096):
            xb = (torch.from_numpy(dense_rows(x_val, s, s + 4096)).to(dev) if is_sparse(x_val)
                  else as_inputs(x_val[s:s + 4096], dev))
            a, b = self.heads(xb)
            label.append(torch.softmax(a.float(), -1).cpu().numpy())
            teacher.append(torch.softmax(b.float(), -1).cpu().numpy())
        chosen = choose_blend(np.concatenate(label), np.concatenate(teacher), y_val)
        self.blend.fill_(chosen["dho_blend"])
        return chosen


def is_dual_head_state(state_dict: dict) -> bool:
    """Whether saved weights are a `DualHead`'s (so loading must wrap the student first)."""
    return "teacher_head.weight" in state_dict and "blend" in state_dict


class DHOObjective:
    """The trainer's pool objective for DHO: the teacher head (not the label head the trainer
    passes in) is scored against the teacher's targets, soft or hard, at temperature τ."""

    def __init__(self, mode: str = "soft", temperature: float = 1.0):
        self.mode, self.temperature = mode, float(temperature)
        self.model: DualHead | None = None

    def bind(self, model) -> None:
        if not isinstance(model, DualHead):
            raise ConfigError("method dho trains a dual-head student (mentor.students.dual.DualHead); wrap the student "
                              "with DualHead(student) first (`mentor train` does this), or pick another method.")
        self.model = model

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        if self.model is None or self.model.teacher_logits is None:
            raise ConfigError("DHOObjective is not bound to a DualHead student; call bind(model) before training.")
        return per_example_distillation(self.model.teacher_logits.float(), teacher_probs, mode=self.mode,
                                        temperature=self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
