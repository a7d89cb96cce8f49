"""Teachers: anything that gives class probabilities for a batch of examples.

One interface for every kind of teacher (`base.Teacher`): `predict_proba(inputs, ids=None) -> (n, C)`
probabilities at temperature 1, a stable `fingerprint` (so the store can tell whose outputs it
holds) and a `cost_per_example` (what one call costs, for budgets). Where each kind lives:

- `local`: a torch module or a fitted scikit-learn classifier, and the built-in teachers fitted on A;
- `encoder`: a frozen MiniLM sentence encoder with a logistic head (the built-in text teacher);
- `file`: precomputed outputs keyed by id (labels made elsewhere);
- `http`: a teacher behind mentor's JSON protocol, and `teacher_server` that serves any teacher so;
- `cache`: saving and loading a fitted built-in teacher without pickle;
- `pools`: running teacher calls on threads or Ray workers.
"""

from ..credentials import redact_url
from .base import ClassOrderTeacher, EmbeddingTeacher, Teacher, TeacherAnswer, fingerprint_module
from .cache import SKOPS_TRUSTED, TeacherCacheError, load_teacher, save_teacher, teacher_cache_suffix
from .encoder import EncoderTeacher, minilm_path
from .file import FileTeacher
from .http import RemoteTeacher, RemoteTeacherError, serve_teacher, teacher_server
from .local import SklearnTeacher, TorchTeacher, train_model_teacher

__all__ = ["ClassOrderTeacher", "EmbeddingTeacher", "EncoderTeacher", "FileTeacher", "RemoteTeacher", "RemoteTeacherError", "SKOPS_TRUSTED",
           "SklearnTeacher", "Teacher", "TeacherAnswer", "TeacherCacheError", "TorchTeacher", "fingerprint_module", "load_teacher",
           "minilm_path", "redact_url", "save_teacher", "serve_teacher", "teacher_cache_suffix", "teacher_server",
           "train_model_teacher"]
