"""mentor: distil a big teacher into a small student with a few labels and a big unlabeled pool.

The data flows one way, one module per step:

    data.py      load a data set, split it into A (labeled), V (validation), U (pool), test
    teachers.py  any teacher behind one interface (torch, sklearn, file of outputs, MiniLM, HTTP)
    store/       teacher outputs in Parquet shards: paid once, crash-safe, resumable
    methods.py   distillation methods by name (the objective and per-example weights)
    corrections.py  weighted distillation, SLaM and the noise baselines (plain functions)
    selection.py / active.py  budgeted teacher queries (RAD and baselines)
    guide.py / lm.py  GUIDE initialisation and token-level LM distillation
    losses.py    the distillation losses as plain functions
    train.py     the bundled trainer (CE on A + distillation on U)
    evaluate.py  accuracy, NLL, ECE, agreement, gap closed
    pipeline.py  the steps wired together; cli.py and bench.py on top
"""

from .config import RunConfig, load_config, parse_config
from .data import Dataset, Splits, load_dataset, load_file, make_splits
from .errors import ConfigError, DataError, MentorError, StoreError, TeacherOutputError
from .losses import distillation_loss, hard_distillation, kd_kl, per_example_distillation, soft_cross_entropy
from .methods import METHODS, MethodContext, MethodPlan, register_method
from .pipeline import evaluate, label, prepare, run, train
from .store import TeacherStore
from .teachers import EncoderTeacher, FileTeacher, RemoteTeacher, SklearnTeacher, Teacher, TorchTeacher
from .train import TrainConfig, VanillaObjective, predict_proba, train_student

__version__ = "0.1.0"


def demo(output_dir: str = "results/demo", seed: int = 0) -> dict:
    """Run the embedded digits demo and return its metrics."""
    from .presets import demo_config
    return run(demo_config(output_dir=output_dir, seed=seed))
