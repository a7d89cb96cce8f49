"""mentor: distil a big teacher into a small student with a few labels and a big unlabeled pool.

The data flows one way, one module per step:

    data.py      load a data set, split it into A (labeled), V (validation), U (pool), test
    teachers/    any teacher behind one interface (torch, sklearn, file, MiniLM, HTTP, LLM)
    store/       teacher outputs in Parquet shards: paid once, crash-safe, resumable
    methods.py   distillation methods by name (the objective and per-example weights)
    corrections.py  weighted distillation, SLaM and the noise baselines (plain functions)
    active/      budgeted teacher queries: selectors (RAD and baselines) and the loop
    lm/          token-level LM distillation and the GUIDE initialiser
    losses.py    the distillation losses as plain functions
    students/    built-in models and featurizers, the bundled trainer (CE on A + distillation on U),
                 export (the folder a user ships: safetensors + JSON + model.onnx + model card; predict)
    evaluate.py  accuracy, NLL, ECE, agreement, gap closed
    pipeline.py  the steps wired together; cli.py and bench.py on top
"""

from typing import TYPE_CHECKING

# The public names, each from the module that defines it. They are imported on first use
# (PEP 562), so `import mentor` and the CLI's help start without loading torch or pyarrow.
_EXPORTS = {
    "config": ["RunConfig", "load_config", "parse_config"],
    "data": ["Dataset", "Splits", "load_dataset", "load_file", "make_splits"],
    "errors": ["ConfigError", "DataError", "MentorError", "StoreError", "TeacherOutputError"],
    "losses": ["distillation_loss", "hard_distillation", "kd_kl", "per_example_distillation", "soft_cross_entropy"],
    "methods": ["METHODS", "MethodContext", "MethodPlan", "register_method"],
    # pipeline's train and evaluate are reached as mentor.pipeline.train / .evaluate: the name
    # mentor.evaluate is the module of the same name
    "pipeline": ["label", "prepare", "run"],
    "store": ["TeacherStore"],
    "teachers": ["EncoderTeacher", "FileTeacher", "RemoteTeacher", "SklearnTeacher", "Teacher", "TorchTeacher"],
    "students.train": ["TrainConfig", "VanillaObjective", "predict_proba", "train_student"],
    "students.export": ["load_student_folder", "predict_file", "save_student_folder"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["demo"]

if TYPE_CHECKING:  # pragma: no cover - for editors and type checkers only
    from .config import RunConfig, load_config, parse_config  # noqa: F401
    from .pipeline import label, prepare, run  # noqa: F401
    from .store import TeacherStore  # noqa: F401


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mentor' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


__version__ = "0.1.0"


def demo(output_dir: str = "results/demo", seed: int = 0) -> dict:
    """Run the embedded digits demo and return its metrics."""
    from .pipeline import run
    from .presets import demo_config
    return run(demo_config(output_dir=output_dir, seed=seed))
