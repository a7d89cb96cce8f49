"""The teacher interface, fingerprints, and the wrapper that puts a teacher's classes in the data's order."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..checks import class_permutation
from ..errors import ConfigError


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:20]


def fingerprint_module(module: nn.Module) -> str:
    """Hash of a module's class and parameters: equal weights give equal fingerprints."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _fingerprint_object(obj) -> str:
    """Hash of an object's pickled bytes: used only to hash, never to load (mentor loads no pickle)."""
    return _sha(pickle.dumps(obj, protocol=4))


@dataclass
class TeacherAnswer:
    """One teacher call's full answer: the probabilities, plus what a paid teacher tells beside them.

    `extras` holds per-row columns kept next to the probabilities in the store (an LLM's raw
    answer, its per-label scores, token counts, an abstention flag): one list per column, one
    entry per row, values str/int/float/bool or None. `cost` is what the call actually cost when
    the teacher knows it (token usage times price); None means `cost_per_example` per row."""

    probs: np.ndarray
    extras: dict[str, list] = field(default_factory=dict)
    cost: float | None = None


class Teacher:
    """Base class. Subclasses set `n_classes`, `fingerprint` and implement `predict_proba`
    (and `answer` when they have more to keep than probabilities, or know each call's cost)."""

    n_classes: int
    fingerprint: str
    cost_per_example: float = 0.0
    kind: str = "teacher"

    def predict_proba(self, inputs, ids=None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def answer(self, inputs, ids=None) -> TeacherAnswer:
        """The call the store makes: probabilities plus extras and the call's real cost."""
        return TeacherAnswer(self.predict_proba(inputs, ids))

    def describe(self) -> dict:
        """What is recorded next to results so a run can be traced to its teacher."""
        return {"kind": self.kind, "fingerprint": self.fingerprint, "n_classes": self.n_classes,
                "cost_per_example": self.cost_per_example}


class ClassOrderTeacher(Teacher):
    """Another teacher whose output columns follow its own class order (`classes`), reordered to
    the data's (`data_classes`) by name. The fingerprint records the order, because reordered
    outputs are different outputs."""

    def __init__(self, teacher: Teacher, classes, data_classes):
        self.teacher, self.classes = teacher, [str(c) for c in classes]
        self.perm = class_permutation(self.classes, data_classes, name=f"teacher {teacher.fingerprint}")
        self.n_classes, self.kind = teacher.n_classes, teacher.kind
        self.cost_per_example = teacher.cost_per_example
        self.fingerprint = teacher.fingerprint + ("" if self.perm is None else
                                                  "-" + _sha(json.dumps(self.classes).encode())[:8])

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        probs = self.teacher.predict_proba(inputs, ids)
        return probs if self.perm is None else np.ascontiguousarray(probs[:, self.perm])

    def answer(self, inputs, ids=None) -> TeacherAnswer:
        got = self.teacher.answer(inputs, ids)
        if self.perm is not None:
            got.probs = np.ascontiguousarray(got.probs[:, self.perm])
        return got

    def describe(self) -> dict:
        return {**self.teacher.describe(), "fingerprint": self.fingerprint, "classes": self.classes}


class EmbeddingTeacher(Teacher):
    """Another teacher whose answers also carry its embedding of each input (extras column
    `embedding`, one float vector per row): what LELP builds its subclasses from. The wrapped
    teacher implements `answer_with_embeddings(inputs, ids)`; its probabilities are unchanged, but
    the fingerprint differs, because the stored rows do."""

    EXTRA = "embedding"

    def __init__(self, teacher: Teacher):
        if not hasattr(teacher, "answer_with_embeddings"):
            raise ConfigError(f"teacher.embeddings: true, but a {teacher.kind!r} teacher cannot give its embeddings "
                              "(the built-in mlp, cnn, cnn1d and minilm teachers can; a custom Teacher can return "
                              "extras['embedding']). Set teacher.embeddings: false or change teacher.kind.")
        self.teacher = teacher
        self.n_classes, self.kind = teacher.n_classes, teacher.kind
        self.cost_per_example = teacher.cost_per_example
        self.fingerprint = teacher.fingerprint + "-emb"

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.teacher.predict_proba(inputs, ids)

    def answer(self, inputs, ids=None) -> TeacherAnswer:
        return self.teacher.answer_with_embeddings(inputs, ids)

    def describe(self) -> dict:
        return {**self.teacher.describe(), "fingerprint": self.fingerprint, "embeddings": True}
