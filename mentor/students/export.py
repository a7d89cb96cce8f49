"""Students you can ship: a self-contained model folder, its ONNX graph, its model card, and
prediction on new files with torch or onnxruntime.

A folder holds

    mentor_student.json    format version, student kind + constructor args, classes, data kind and inputs,
                           teacher, method, seed, sizes, test metrics, ONNX check, latency, size, config
    model.safetensors      the module's weights (safetensors: tensors only, never pickle)
    featurizer.json        the featurizer's kind and plain state (a TF-IDF vocabulary, its settings)
    featurizer.safetensors its arrays (standardise: mean_/scale_; TF-IDF: idf_), when it has any
    model.onnx             the module with a softmax on top: input `features` (batch, d) float32,
                           outputs `logits` and `probs`; the featurizer runs in Python before it
                           (a transformer student's graph takes `input_ids` and `attention_mask`,
                           int64 (batch, length), and gives `probs`)
    README.md              the model card
    wrapper.safetensors    a student trained inside a wrapper (methods dho, lelp: WRAPPERS) keeps the
                           wrapper's own tensors here; its base is written as the base kind writes it

Nothing here unpickles: weights and arrays are read with safetensors, the rest is JSON. How a
student kind is written and rebuilt is a `StudentFormat` in `FORMATS` (keyed by student kind), so
another kind (e.g. a Hugging Face transformer written with `save_pretrained`) plugs in its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from .models import Featurizer, build_model
from .rows import dense_rows, is_sparse, n_rows
from .train import as_inputs

FORMAT_VERSION = 1
CONFIG_FILE = "mentor_student.json"
WEIGHTS_FILE = "model.safetensors"
FEATURIZER_FILE = "featurizer.json"
FEATURIZER_ARRAYS = "featurizer.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "README.md"
ONNX_TOLERANCE = 1e-4  # max |p_onnx - p_torch| on the check rows for a graph to count as exported
BUILT_IN_KINDS = ("logistic", "mlp", "cnn", "cnn1d", "tfidf")
EXPORT_HINT = "export the run again with `mentor export RUN_DIR OUT_DIR`"


# ---------------------------------------------------------------------------------------------- formats

@dataclass(frozen=True)
class StudentFormat:
    """How one student kind is written into a folder and rebuilt from it.

    save(model, folder, args) writes the weights and returns the JSON-able args that rebuilding needs;
    load(folder, args) rebuilds the module; probs(model, x) gives its probabilities on featurised rows
    (the torch runtime, the ONNX check and the latency use it); onnx(model, example, file) writes a
    model.onnx whose input `features` takes those rows, or is None when this kind cannot export
    (`why_no_onnx` says why). A graph with other inputs names them in `onnx_io` and builds them from
    featurised rows with `onnx_feed(args, rows)` (args: what `save` returned).
    """
    save: Callable[[nn.Module, Path, dict], dict]
    load: Callable[[Path, dict], nn.Module]
    onnx: Callable[[nn.Module, np.ndarray, Path], None] | None = None
    why_no_onnx: str = ""
    probs: Callable[[nn.Module, np.ndarray], np.ndarray] | None = None  # default: torch_probs (softmax of a float matrix)
    onnx_feed: Callable[[dict, np.ndarray], dict] | None = None  # default: {"features": rows}
    onnx_io: dict | None = None  # the graph's inputs and outputs for the record; default: features -> logits, probs

    def feed(self, args: dict) -> Callable[[np.ndarray], dict]:
        """Featurised rows -> the ONNX session's inputs."""
        return (lambda x: self.onnx_feed(args, x)) if self.onnx_feed else (lambda x: {"features": x})


FORMATS: dict[str, StudentFormat] = {}


def register_format(kind: str, fmt: StudentFormat) -> None:
    """Make `kind` (the `student.kind` of the folder's config) writable and loadable."""
    FORMATS[kind] = fmt


def format_for(kind: str, args: dict | None = None) -> StudentFormat:
    """The format of `kind`; a wrapped student's (WRAPPERS: DHO, LELP) is its base kind's, composed
    from the base named in `args` (what the folder records)."""
    if kind in WRAPPERS and args is not None and "base_args" in args:
        return _wrapped_format(kind, args)
    if kind not in FORMATS:
        raise DataError(f"student kind {kind!r} has no folder format in this mentor (known: {sorted(FORMATS)}); "
                        "use a mentor version that knows it, or register one with "
                        "mentor.students.export.register_format.")
    return FORMATS[kind]


def save_weights(model: nn.Module, folder: Path, args: dict) -> dict:
    """The state dict as safetensors (tensors made contiguous; shared storage is copied)."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return args


def read_safetensors(path: Path, what: str) -> dict:
    """Tensors from a safetensors file; anything else (a pickle, a truncated file) is refused unread."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise DataError(f"{what} {path} is missing; {EXPORT_HINT}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{what} {path} is not a safetensors file ({e}); mentor never unpickles files, because "
                        f"that can run code. Nothing was read from it; {EXPORT_HINT}.") from None


def load_into(model: nn.Module, state: dict, folder: Path, described: str) -> nn.Module:
    """Load `state` strictly, naming what differs when the weights were written for another shape."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if own != got:
        missing, extra = sorted(set(own) - set(got)), sorted(set(got) - set(own))
        shapes = [f"{k}: config {own[k]} vs weights {got[k]}" for k in sorted(set(own) & set(got)) if own[k] != got[k]]
        detail = "; ".join(filter(None, [f"missing {missing[:4]}" if missing else "",
                                         f"unexpected {extra[:4]}" if extra else "", ", ".join(shapes[:4])]))
        raise DataError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE} ({described}): {detail}. "
                        f"The weights and the config come from different students; copy both from the same folder, "
                        f"or {EXPORT_HINT}.")
    model.load_state_dict(state)
    return model.eval()


def _load_built_in(kind: str) -> Callable[[Path, dict], nn.Module]:
    def load(folder: Path, args: dict) -> nn.Module:
        try:
            model = build_model(kind, in_features=int(args["in_features"]), n_classes=int(args["n_classes"]),
                                image_shape=args.get("image_shape"), hidden=tuple(args.get("hidden", (64,))),
                                dropout=float(args.get("dropout", 0.0)))
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise DataError(f"{folder / CONFIG_FILE}: the {kind!r} student's args {args} cannot rebuild it ({e}); "
                            f"{EXPORT_HINT}.") from None
        return load_into(model, read_safetensors(folder / WEIGHTS_FILE, "weights file"), folder,
                         f"{kind} with {args}")
    return load


def _build_subclass(args: dict) -> nn.Module:
    from .subclass import SubclassHead
    base = build_model(args["base_kind"], in_features=int(args["in_features"]), n_classes=int(args["n_classes"]),
                       image_shape=args.get("image_shape"), hidden=tuple(args.get("hidden", (64,))),
                       dropout=float(args.get("dropout", 0.0)))
    return SubclassHead(base, int(args["n_classes"]), int(args["subclasses"]))


def _load_subclass(folder: Path, args: dict) -> nn.Module:
    """A LELP student of a folder written before wrapped students (flat args: a built-in kind whose
    output layer has a unit per subclass, all weights in one file); newer folders name base_args."""
    try:
        model = _build_subclass(args)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise DataError(f"{folder / CONFIG_FILE}: the LELP student's args {args} cannot rebuild it ({e}); "
                        f"{EXPORT_HINT}.") from None
    return load_into(model, read_safetensors(folder / WEIGHTS_FILE, "weights file"), folder, f"LELP student {args}")


def _load_custom(folder: Path, args: dict) -> nn.Module:
    raise DataError(f"{folder} holds a custom module ({args.get('class', 'unknown class')}) that mentor cannot "
                    f"rebuild: predict with `--runtime onnx`, or build your module in Python and load "
                    f"{folder / WEIGHTS_FILE} into it with safetensors.torch.load_file.")


class _WithProbs(nn.Module):
    """The exported graph: logits and their softmax, so a consumer needs no post-processing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features):
        logits = self.model(features)
        return logits, torch.softmax(logits, dim=-1)


def export_onnx_matrix(model: nn.Module, example: np.ndarray, file: Path) -> None:
    """torch.onnx.export (the torch.export-based exporter) with a dynamic batch axis."""
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency; import it to name it when missing)
    except ImportError:
        raise DataError("ONNX export needs the packages onnx, onnxscript and onnxruntime: "
                        "pip install 'mentor[export]' (scripts/setup.sh installs them).") from None
    x = torch.as_tensor(np.asarray(example, np.float32))
    if len(x) < 2:  # a batch of one would be specialised to 1
        x = x.repeat(2, *([1] * (x.dim() - 1)))
    wrapped = _WithProbs(model).eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, (x[:2],), None, input_names=["features"],
                                        output_names=["logits", "probs"],
                                        dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
                                        dynamo=True, verbose=False)
        program.save(str(file))
    finally:
        quiet.setLevel(level)


BUILT_IN = {kind: StudentFormat(save=save_weights, load=_load_built_in(kind), onnx=export_onnx_matrix)
            for kind in BUILT_IN_KINDS}
for _kind, _fmt in BUILT_IN.items():
    register_format(_kind, _fmt)
register_format("custom", StudentFormat(save=save_weights, load=_load_custom, onnx=export_onnx_matrix))
register_format("subclass", StudentFormat(save=save_weights, load=_load_subclass, onnx=export_onnx_matrix))


# ------------------------------------------------------------------- wrapped students (methods dho, lelp)

WRAPPER_FILE = "wrapper.safetensors"  # the wrapper's own tensors: DHO's teacher head and blend, LELP's subclass count


def _dual_head(base: nn.Module, args: dict) -> nn.Module:
    from .dual import DualHead
    return DualHead(base)


def _subclass_head(base: nn.Module, args: dict) -> nn.Module:
    from .subclass import SubclassHead
    return SubclassHead(base, int(args["n_classes"]), int(args["subclasses"]))


# kind -> builder(base, args): methods that train the student inside a wrapper. Their folder holds the
# base as its own kind writes it (e.g. a transformer's save_pretrained folder) plus WRAPPER_FILE.
WRAPPERS: dict[str, Callable[[nn.Module, dict], nn.Module]] = {"dual-head": _dual_head, "subclass": _subclass_head}


def unwrap(model: nn.Module) -> nn.Module:
    """The student inside a DHO or LELP wrapper (the module itself when it is not wrapped)."""
    from .dual import DualHead
    from .subclass import SubclassHead
    while isinstance(model, (DualHead, SubclassHead)):
        model = model.base
    return model


def wrapped_args(model: nn.Module, kind: str, args: dict) -> tuple[str, dict]:
    """(kind, args) to record for `model`, given its unwrapped base's (kind, args)."""
    from .dual import DualHead
    from .subclass import SubclassHead
    if isinstance(model, DualHead):
        return "dual-head", {"base_kind": kind, "base_args": args}
    if isinstance(model, SubclassHead):
        return "subclass", {"base_kind": kind, "base_args": args, "n_classes": model.n_classes,
                            "subclasses": int(model.subclasses)}
    return kind, args


def _wrapped_format(kind: str, args: dict) -> StudentFormat:
    """The base kind's format, with the wrapper's tensors saved beside the base and put back on load."""
    base = format_for(args.get("base_kind", "?"), args.get("base_args"))

    def save(model: nn.Module, folder: Path, a: dict) -> dict:
        from safetensors.torch import save_file
        base_args = base.save(model.base, folder, dict(a["base_args"]))
        own = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
               if not k.startswith("base.")}
        save_file(own, str(folder / WRAPPER_FILE), metadata={"format": "pt"})
        return {**a, "base_args": base_args}

    def load(folder: Path, a: dict) -> nn.Module:
        inner = base.load(folder, a["base_args"])
        try:
            model = WRAPPERS[kind](inner, a)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise DataError(f"{folder / CONFIG_FILE}: the {kind} student's args cannot rebuild it ({e}); "
                            f"{EXPORT_HINT}.") from None
        own = read_safetensors(folder / WRAPPER_FILE, "wrapper weights file")
        state = {**{f"base.{k}": v for k, v in inner.state_dict().items()}, **own}
        return load_into(model, state, folder, f"{kind} around {a['base_kind']}")

    feed = (lambda a, x: base.onnx_feed(a["base_args"], x)) if base.onnx_feed else None
    return StudentFormat(save=save, load=load, onnx=base.onnx, why_no_onnx=base.why_no_onnx, probs=base.probs,
                         onnx_feed=feed, onnx_io=base.onnx_io)


def _save_transformer(model: nn.Module, folder: Path, args: dict) -> dict:
    """Encoder and tokenizer in Hugging Face save_pretrained format (AutoModel/AutoTokenizer load them
    alone), the head as head.safetensors; the folder's featurizer then reads its tokenizer from here."""
    from safetensors.torch import save_file

    from .hf import HEAD_FILE, _no_progress_bars, load_tokenizer
    with _no_progress_bars():
        model.encoder.save_pretrained(str(folder))
    load_tokenizer(args["tokenizer"]).save_pretrained(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(folder / HEAD_FILE))
    return {"n_classes": int(model.head.out_features), "pad_token_id": model.pad_token_id,
            "max_length": model.max_length, "dropout": float(model.dropout.p), "pooling": "mean"}


def _load_transformer(folder: Path, args: dict) -> nn.Module:
    from .hf import HEAD_FILE, TransformerStudent, load_encoder
    try:
        model = TransformerStudent(load_encoder(folder), int(args["n_classes"]), int(args["pad_token_id"]),
                                   dropout=float(args.get("dropout", 0.0)), max_length=int(args["max_length"]))
    except (KeyError, OSError, ValueError) as e:
        raise DataError(f"{folder}: the transformer student cannot be rebuilt ({type(e).__name__}: {e}); "
                        f"{EXPORT_HINT}.") from None
    model.head.load_state_dict(read_safetensors(folder / HEAD_FILE, "head weights"))
    return model.eval()


def _export_transformer(model: nn.Module, example: np.ndarray, file: Path) -> None:
    from .hf import export_onnx_hf
    export_onnx_hf(model, file, example_ids=np.asarray(example, np.int64))


def _transformer_feed(args: dict, ids: np.ndarray) -> dict:
    """Right-padded ids cut to the batch's longest row, as the torch student's forward does: a short
    text then costs a short sequence (the padding is masked out, so the probabilities are the same)."""
    mask = np.asarray(ids) != int(args["pad_token_id"])
    width = max(int(mask.sum(1).max()) if len(mask) else 1, 1)
    return {"input_ids": np.ascontiguousarray(np.asarray(ids)[:, :width], np.int64),
            "attention_mask": np.ascontiguousarray(mask[:, :width], np.int64)}


# the graph takes the featurizer's token ids and their mask (dynamic batch and length) and gives probs
register_format("transformer", StudentFormat(
    save=_save_transformer, load=_load_transformer, onnx=_export_transformer, onnx_feed=_transformer_feed,
    onnx_io={"inputs": {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]},
             "outputs": {"probs": ["batch", "n_classes"]}}))


def _load_efficientnet(folder: Path, args: dict) -> nn.Module:
    """The EfficientNet-Lite0 student from its args; its weights are all in the folder (no ImageNet file needed)."""
    from .efficientnet import EfficientNetLite0
    try:
        model = EfficientNetLite0(int(args["n_classes"]), tuple(args["image_shape"]), image_size=int(args["image_size"]),
                                  dropout=float(args.get("dropout", 0.0)), augment=bool(args.get("augment", False)))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise DataError(f"{folder / CONFIG_FILE}: the efficientnet-lite0 student's args {args} cannot rebuild it "
                        f"({e}); {EXPORT_HINT}.") from None
    return load_into(model, read_safetensors(folder / WEIGHTS_FILE, "weights file"), folder, f"efficientnet-lite0 {args}")


# the graph holds the resize and normalisation, so model.onnx takes the same flattened [0, 1] rows as torch
register_format("efficientnet-lite0", StudentFormat(save=save_weights, load=_load_efficientnet, onnx=export_onnx_matrix))


def built_in_args(kind: str, model: nn.Module, args: dict) -> tuple[str, dict]:
    """(kind, args) to record: `kind` when build_model(kind, **args) has `model`'s weights, else
    "custom" (any other torch module: weights and ONNX are written, the torch side cannot be rebuilt)."""
    if kind in BUILT_IN_KINDS:
        try:
            probe = build_model(kind, in_features=args["in_features"], n_classes=args["n_classes"],
                                image_shape=args.get("image_shape"), hidden=tuple(args.get("hidden", (64,))),
                                dropout=args.get("dropout", 0.0))
            same = {k: v.shape for k, v in probe.state_dict().items()} == \
                   {k: v.shape for k, v in model.state_dict().items()} and type(probe) is type(model)
        except (KeyError, ConfigError):
            same = False
        if same:
            return kind, args
    return "custom", {**args, "class": f"{type(model).__module__}.{type(model).__qualname__}"}


# ---------------------------------------------------------------------------------------------- featurizer

def save_featurizer(feat: Featurizer, folder: Path) -> dict:
    """featurizer.json (kind, settings, vocabulary) + featurizer.safetensors (arrays); returns the JSON."""
    from safetensors.numpy import save_file
    state = feat.state_dict()
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    if feat.kind == "tokens":  # the tokenizer is saved in the folder itself (with the transformer's weights)
        plain["tokenizer"] = "."
    if feat.kind == "tfidf":  # what a non-Python consumer needs to reproduce the vectors
        v = feat.vectorizer_
        plain["settings"] = {"lowercase": v.lowercase, "ngram_range": list(v.ngram_range), "sublinear_tf": v.sublinear_tf,
                             "norm": v.norm, "token_pattern": v.token_pattern, "use_idf": v.use_idf,
                             "smooth_idf": v.smooth_idf}
    plain["arrays"] = sorted(arrays)
    if arrays:
        save_file(arrays, str(folder / FEATURIZER_ARRAYS))
    (folder / FEATURIZER_FILE).write_text(json.dumps(plain, ensure_ascii=False))
    return {"kind": feat.kind, "arrays": sorted(arrays)}


def load_featurizer(folder: Path) -> Featurizer:
    path = folder / FEATURIZER_FILE
    if not path.is_file():
        raise DataError(f"{folder} has no {FEATURIZER_FILE} (the featurizer's state); {EXPORT_HINT}.")
    plain = _read_json(path)
    names = plain.pop("arrays", [])
    plain.pop("settings", None)
    if names:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        file = folder / FEATURIZER_ARRAYS
        if not file.is_file():
            raise DataError(f"{file} is missing (the featurizer's arrays {names}); {EXPORT_HINT}.")
        try:
            plain.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{file} is not a safetensors file ({e}); nothing was read from it; {EXPORT_HINT}.") from None
    if plain.get("kind") == "tokens" and plain.get("tokenizer") == ".":
        plain["tokenizer"] = str(folder)
    try:
        return Featurizer.from_state_dict(plain)
    except (KeyError, ConfigError, TypeError, ValueError) as e:
        raise DataError(f"{path}: the featurizer state cannot be rebuilt ({type(e).__name__}: {e}); {EXPORT_HINT}.") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); {EXPORT_HINT}.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}, not a JSON object; {EXPORT_HINT}.")
    return data


# ---------------------------------------------------------------------------------------------- runtimes

def onnx_session(file: Path):
    """An onnxruntime CPU session using as many threads as torch does (so latencies compare)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DataError("the ONNX runtime needs onnxruntime: pip install 'mentor[export]', or use --runtime torch.") \
            from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
    return ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_probs(session, x: np.ndarray, batch_size: int = 4096, feed: Callable[[np.ndarray], dict] | None = None
               ) -> np.ndarray:
    # float32 rows for a `features` graph; other graphs' feeds get the rows as they are (e.g. int64 token ids)
    rows = (lambda s: x[s:s + batch_size]) if feed and not is_sparse(x) else (lambda s: dense_rows(x, s, s + batch_size))
    feed = feed or (lambda part: {"features": part})
    out = [session.run(["probs"], feed(np.ascontiguousarray(rows(s))))[0] for s in range(0, n_rows(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def torch_probs(model: nn.Module, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Softmax of the module on featurised rows, in batches of `batch_size` (default: the model's
    `predict_batch_size` when it has one, as a transformer or CNN whose activations are large, else 4096)."""
    batch_size = batch_size or getattr(model, "predict_batch_size", 4096)
    model.eval()
    out = [torch.softmax(model(as_inputs(dense_rows(x, s, s + batch_size) if is_sparse(x) else x[s:s + batch_size])
                               ).float(), -1).numpy()
           for s in range(0, n_rows(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def ms_per_example(fn: Callable[[np.ndarray], object], x: np.ndarray, batch: int, budget_s: float = 0.25,
                   min_reps: int = 5) -> float:
    """Median wall time of fn on one batch of `batch` rows, per example, in milliseconds."""
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    fn(xb)  # warm-up
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(xb)
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return 1000 * statistics.median(times) / batch


def measure_latency(model: nn.Module, x: np.ndarray, onnx_file: Path | None, budget_s: float = 0.25,
                    probs: Callable | None = None, feed: Callable[[np.ndarray], dict] | None = None) -> dict:
    """CPU ms per example at batch 1 and 64 for torch (and ONNX when exported), on featurised rows;
    `probs(model, rows)` is the torch side (default: softmax of the module on a float matrix), `feed(rows)`
    the graph's inputs (default: {"features": rows})."""
    feed = feed or (lambda rows: {"features": rows})
    model = model.cpu().eval()
    run_torch = (lambda xb: probs(model, xb)) if probs else (lambda xb: torch_probs(model, xb))
    out = {"threads": torch.get_num_threads(), "featurizer_included": False}
    for b in (1, 64):
        out[f"torch_b{b}_ms"] = ms_per_example(run_torch, x, b, budget_s)
    if onnx_file is not None:
        session = onnx_session(onnx_file)
        for b in (1, 64):
            out[f"onnx_b{b}_ms"] = ms_per_example(lambda xb: session.run(["probs"], feed(xb)), x, b, budget_s)
    return out


# ---------------------------------------------------------------------------------------------- the folder

def save_student_folder(model: nn.Module, featurizer: Featurizer, meta: dict, path, *, check_x: np.ndarray,
                        onnx: str = "auto", latency: bool = True) -> dict:
    """Write a self-contained student folder at `path` (replacing one there) and return its record.

    meta: `student` = {"kind", "args"} (args rebuild the module: build_model's keyword arguments for
    the built-in kinds), `n_classes`, `class_names`, `data` (name, kind, `inputs`: how new files are
    read), and what the card reports: teacher, method, seed, sizes, metrics (`test`, `seeds`), config.
    check_x: featurised rows (V) on which model.onnx must match torch within ONNX_TOLERANCE, also the
    latency inputs. onnx: "auto" records a failed export in the record and the card, "required"
    raises DataError instead (nothing written), "off" skips it.
    """
    if onnx not in ("auto", "required", "off"):
        raise ConfigError(f"onnx must be auto, required or off, got {onnx!r}")
    path = Path(path).absolute()
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / CONFIG_FILE).is_file())):
        raise DataError(f"{path} exists and is not a mentor model folder (nor empty); it is left as it is. Choose a "
                        "new or empty folder for the model (an existing model folder there is replaced).")
    kind = meta["student"]["kind"]
    fmt = format_for(kind, meta["student"].get("args"))
    model = model.cpu().eval()
    # a TF-IDF featurizer gives CSR rows; the graph and the timings take dense ones (token ids stay int64)
    check_x = dense_rows(check_x) if is_sparse(check_x) else np.asarray(check_x)
    if len(check_x) == 0:
        raise DataError("save_student_folder needs at least one featurised row in check_x (V) to check the ONNX "
                        "graph and time the student.")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = {"format": "mentor-student-folder", "format_version": FORMAT_VERSION, **meta}
        record["student"] = {"kind": kind, "args": fmt.save(model, tmp, dict(meta["student"].get("args", {})))}
        record["featurizer"] = save_featurizer(featurizer, tmp)
        record["params"] = int(sum(p.numel() for p in model.parameters()))
        feed = fmt.feed(record["student"]["args"])
        record["onnx"] = _export_and_check(model, fmt, check_x, tmp, onnx, feed)
        onnx_file = tmp / ONNX_FILE if record["onnx"].get("exported") else None
        if latency:
            record["latency_ms_per_example"] = measure_latency(model, check_x, onnx_file, probs=fmt.probs, feed=feed)
        record["size_mb"] = {"weights": _mb(tmp / WEIGHTS_FILE) if (tmp / WEIGHTS_FILE).exists() else _mb_dir(tmp),
                             "onnx": _mb(onnx_file) if onnx_file else None, "folder": None}
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=_plain, ensure_ascii=False))
        (tmp / CARD_FILE).write_text(model_card(record))
        record["size_mb"]["folder"] = _mb_dir(tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=_plain, ensure_ascii=False))
        mode = (tmp / CARD_FILE).stat().st_mode & 0o777  # safetensors writes 0600: a shipped folder is read by others
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, mode)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _export_and_check(model, fmt: StudentFormat, check_x, folder: Path, mode: str,
                      feed: Callable[[np.ndarray], dict]) -> dict:
    if mode == "off":
        return {"exported": False, "why": "not asked for (onnx: off)"}
    why = None
    if fmt.onnx is None:
        why = fmt.why_no_onnx or "this student kind has no ONNX exporter"
    else:
        try:
            fmt.onnx(model, check_x[:2], folder / ONNX_FILE)
            p_onnx = onnx_probs(onnx_session(folder / ONNX_FILE), check_x, getattr(model, "predict_batch_size", 4096),
                                feed=feed)
            diff = float(np.abs(p_onnx - (fmt.probs or torch_probs)(model, check_x)).max())
            if diff <= ONNX_TOLERANCE:
                return {"exported": True, "file": ONNX_FILE, "max_abs_diff": diff, "checked_rows": len(check_x),
                        "tolerance": ONNX_TOLERANCE, "opset": _opset(folder / ONNX_FILE),
                        **(fmt.onnx_io or {"inputs": {"features": ["batch", int(np.prod(check_x.shape[1:]))]},
                                           "outputs": {"logits": ["batch", "n_classes"], "probs": ["batch", "n_classes"]}})}
            why = f"its probabilities differ from torch by {diff:.2e} on the check rows (tolerance {ONNX_TOLERANCE:g})"
        except DataError as e:
            why = str(e)
        except Exception as e:  # the exporter's own errors: an op it cannot translate, a dynamic shape, ...
            why = f"torch.onnx.export failed: {_first_lines(e)}"
    (folder / ONNX_FILE).unlink(missing_ok=True)
    if mode == "required":
        raise DataError(f"the student could not be exported to ONNX: {why}. Predict with the torch runtime "
                        "(the folder without --require-onnx), or use a student kind that exports "
                        f"({', '.join(k for k, f in FORMATS.items() if f.onnx is not None)}).")
    return {"exported": False, "why": why}


def _first_lines(e: BaseException) -> str:
    """The exporter's error and its cause, one line each, without terminal colour codes."""
    import re
    parts = []
    while e is not None and len(parts) < 3:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        parts.append(f"{type(e).__name__}: {text[0][:200] if text else ''}")
        e = e.__cause__
    return "; caused by ".join(parts)


def _opset(file: Path):
    try:
        import onnx
        return int(next(o.version for o in onnx.load(str(file), load_external_data=False).opset_import
                        if o.domain in ("", "ai.onnx")))
    except Exception:
        return None


def _replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest`; a folder already there is moved aside first and removed after."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        if not dest.is_dir():
            raise DataError(f"{dest} is a file, not a folder; choose another place for the model folder.")
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2 ** 20, 4)


def _mb_dir(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20, 4)


def _plain(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def load_student_folder(path) -> tuple[nn.Module, Featurizer, dict]:
    """(model in eval mode, featurizer, the folder's record) from a folder `save_student_folder` wrote."""
    folder = Path(path)
    meta = read_record(folder)
    model = format_for(meta["student"]["kind"], meta["student"].get("args")).load(folder, meta["student"].get("args", {}))
    return model, load_featurizer(folder), meta


def read_record(folder: Path) -> dict:
    """The folder's mentor_student.json, checked: present, JSON, a known format version, a student kind."""
    if not folder.is_dir():
        raise DataError(f"model folder {folder} does not exist (or is a file); give the folder a run wrote "
                        f"(<output_dir>/model) or one written by `mentor export RUN_DIR OUT_DIR`.")
    if not (folder / CONFIG_FILE).is_file():
        if (folder / "config.yaml").is_file():
            raise DataError(f"{folder} is a run folder, not a model folder: give {folder / 'model'} (written by "
                            f"`mentor run`, `train` or `evaluate`), or write one with `mentor export {folder} OUT_DIR`.")
        raise DataError(f"{folder} is not a mentor model folder: it has no {CONFIG_FILE}. Give the folder a run "
                        f"wrote (<output_dir>/model), or {EXPORT_HINT}.")
    meta = _read_json(folder / CONFIG_FILE)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise DataError(f"{folder / CONFIG_FILE} has format_version {version!r}; this mentor reads version "
                        f"{FORMAT_VERSION}. " + ("Upgrade mentor to read it." if newer else f"{EXPORT_HINT[0].upper()}"
                                                                                        f"{EXPORT_HINT[1:]}."))
    student = meta.get("student")
    if not isinstance(student, dict) or "kind" not in student:
        raise DataError(f"{folder / CONFIG_FILE} does not say which student it holds (no student.kind); {EXPORT_HINT}.")
    return meta


# ---------------------------------------------------------------------------------------------- predict

def new_data_batches(spec: dict, data_path, batch_rows: int):
    """(ids, inputs) batches of a new file, read the way the training data was (the folder's
    `data.inputs`); features that differ from the training ones (kind, columns, count) are a
    DataError naming the difference and the fix."""
    from ..data import input_columns, iter_file_batches
    where = str(data_path)
    kind = spec.get("kind")
    cols = spec.get("columns") if kind != "text" else None
    keys = {"id_column": spec.get("id_column", "id"), "label_column": spec.get("label_column", "label"),
            "text_column": spec.get("text_column", "text"), "feature_columns": cols}
    try:
        planned, names = input_columns(data_path, **keys)
    except DataError as e:
        if cols is None or "not found" not in str(e):
            raise
        raise DataError(f"{where}: its features differ from the ones the model was trained on ({e}). Give it the "
                        f"training columns {cols} with the same names (extra columns are ignored).") from None
    if kind == "text" and planned != "text":
        raise DataError(f"{where}: the model reads text from a column {keys['text_column']!r}, but this file has no "
                        f"such text column (it would read the numeric column(s) {names[:8]}). Put the texts in a "
                        f"string column named {keys['text_column']!r}.")
    if kind != "text" and planned == "text":
        raise DataError(f"{where}: the model was trained on {spec.get('n_features')} numeric features, but this "
                        f"file holds text ({names[0]!r}). Predict with a model trained on text, or give the file "
                        "the numeric features.")
    want = spec.get("n_features")
    for ids, inputs in iter_file_batches(data_path, batch_rows, **keys):
        if kind != "text" and want is not None and inputs.shape[1] != want:
            raise DataError(f"{where}: {inputs.shape[1]} features per row (columns {names[:8]}"
                            f"{', ...' if len(names) > 8 else ''}), but the model was trained on {want}. Give it "
                            f"the same {want} features as the training data, in the same order.")
        yield ids, inputs


def folder_probs(folder: Path, meta: dict, runtime: str = "torch", batch_size: int = 1024
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities on featurised rows from a model folder: its torch module (rebuilt by the
    kind's format) or its checked model.onnx through onnxruntime."""
    if runtime == "onnx":
        onnx = meta.get("onnx") or {}
        if not onnx.get("exported") or not (folder / ONNX_FILE).is_file():
            why = onnx.get("why") or f"{folder / ONNX_FILE} is missing"
            raise DataError(f"{folder} has no checked model.onnx ({why}); use --runtime torch, or {EXPORT_HINT}.")
        session = onnx_session(folder / ONNX_FILE)
        feed = format_for(meta["student"]["kind"], meta["student"].get("args")).feed(meta["student"].get("args", {}))
        return lambda x: onnx_probs(session, x, batch_size, feed)
    fmt = format_for(meta["student"]["kind"], meta["student"].get("args"))
    model = fmt.load(folder, meta["student"].get("args", {}))
    forward = min(batch_size, getattr(model, "predict_batch_size", batch_size))  # a transformer's activations are large
    return (lambda x: fmt.probs(model, x)) if fmt.probs else (lambda x: torch_probs(model, x, forward))


def predict_file(model_dir, data_path, out_path, *, runtime: str = "torch", batch_size: int = 1024) -> dict:
    """Predict every row of a new file with a model folder; write Parquet with `id`, `label` (class
    name when the folder has them, else the index) and one `prob_<class>` column per class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if runtime not in ("torch", "onnx"):
        raise ConfigError(f"--runtime must be torch or onnx, got {runtime!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    folder = Path(model_dir)
    meta = read_record(folder)
    feat = load_featurizer(folder)
    probs_of = folder_probs(folder, meta, runtime, batch_size)
    n_classes = int(meta["n_classes"])
    names = meta.get("class_names")
    names = [str(c) for c in names] if names else None
    columns = [f"prob_{c}" for c in (names or range(n_classes))]
    out = Path(out_path)
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out {out} must end in .parquet (predictions are written as Parquet).")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    label_type = pa.string() if names else pa.int64()
    schema = pa.schema([("id", pa.string()), ("label", label_type)] + [(c, pa.float32()) for c in columns])
    n, t0 = 0, time.perf_counter()
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for ids, inputs in new_data_batches(meta["data"]["inputs"], data_path, batch_size):
                p = probs_of(feat.transform(inputs))
                top = p.argmax(1)
                label = pa.array([names[i] for i in top], pa.string()) if names else pa.array(top, pa.int64())
                arrays = [pa.array([str(i) for i in ids], pa.string()), label] + [pa.array(p[:, j]) for j in
                                                                                    range(n_classes)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                n += len(ids)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"rows": n, "out": str(out), "runtime": runtime, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- model card

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _spread(rows: list[dict], key: str, pct: bool = True) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "n/a"
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * sd:.2f}%" if pct else f"{mean:.3f} ± {sd:.3f}"


def model_card(r: dict) -> str:
    """The folder's README.md: what the student is, what taught it, how good, fast and big it is."""
    data, student, sizes = r.get("data", {}), r["student"], r.get("sizes", {})
    test, seeds = (r.get("metrics") or {}).get("test"), (r.get("metrics") or {}).get("seeds") or []
    teacher = r.get("teacher") or {}
    names = r.get("class_names")
    kind, described = student["kind"], f"`{student['kind']}`"
    base = (student.get("args") or {}).get("base_kind") if kind in WRAPPERS else None
    if base:  # a dho or lelp student is described as its base kind, e.g. `transformer` with DHO's second head
        what = {"dual-head": "with DHO's second head", "subclass": "with an output per LELP subclass"}[kind]
        kind, described = base, f"`{base}` ({what}; folder kind `{kind}`)"
    lines = [f"# {data.get('name', 'mentor')} classifier: a `{kind}` student distilled by mentor", "",
             f"A student of kind {described} with {r.get('params', 0):,} parameters that sorts "
             f"{data.get('kind', '')} inputs into {r.get('n_classes')} classes"
             + (f" ({', '.join(map(str, names[:20]))}{', ...' if len(names) > 20 else ''})" if names else "") + ".", "",
             "## How it was made", "",
             f"- **Teacher**: {teacher.get('kind', 'unknown')} (fingerprint `{teacher.get('fingerprint')}`)"
             + (f", test accuracy {_pct(teacher.get('test_accuracy'))}" if teacher.get("test_accuracy") is not None else ""),
             f"- **Method**: `{r.get('method')}`, seed {r.get('seed')}",
             f"- **Data**: `{data.get('name')}` ({data.get('kind')}); labeled A = {sizes.get('n_labeled')}, "
             f"validation V = {sizes.get('n_val')}, unlabeled pool U = {sizes.get('n_pool')} (teacher outputs only), "
             f"test = {sizes.get('n_test')}", ""]
    lines += ["## Test metrics", ""]
    if test is None:
        lines += ["Not evaluated yet: run `mentor evaluate CONFIG` (or `mentor export RUN_DIR OUT_DIR` after it) "
                  "to put the test metrics here.", ""]
    else:
        lines += ["| model | accuracy | NLL | ECE |", "|---|---|---|---|",
                  f"| this student | {_pct(test.get('accuracy'))} | {test.get('nll', float('nan')):.3f} | "
                  f"{test.get('ece', float('nan')):.3f} |"]
        for label, key in (("labeled-only student (same architecture, A only)", "labeled_only"),
                           ("teacher", "teacher")):
            m = (r.get("metrics") or {}).get(key)
            if m:
                lines.append(f"| {label} | {_pct(m.get('accuracy'))} | {m.get('nll', float('nan')):.3f} | "
                             f"{m.get('ece', float('nan')):.3f} |")
        lines.append("")
        if len(seeds) > 1:
            lines += [f"Over {len(seeds)} seeds ({', '.join(str(s.get('seed')) for s in seeds)}), same config: "
                      f"accuracy {_spread(seeds, 'accuracy')}, NLL {_spread(seeds, 'nll', False)}, "
                      f"ECE {_spread(seeds, 'ece', False)} (mean ± sample std).", ""]
        else:
            lines += ["One seed: no spread is reported (`mentor export RUN_DIR OUT_DIR --seed-run OTHER_RUN_DIR ...` "
                      "adds runs of the same config with other seeds).", ""]
        lines += ["**Calibration**: expected calibration error (ECE, 15 equal-width confidence bins) on the test split "
                  f"is {test.get('ece', float('nan')):.3f}: the predicted probability of the top class is off from "
                  "its observed accuracy by that much on average.", ""]
    lat, size, onnx = r.get("latency_ms_per_example") or {}, r.get("size_mb") or {}, r.get("onnx") or {}
    lines += ["## Speed and size (CPU)", "",
              f"Parameters: {r.get('params', 0):,}; weights {size.get('weights'):.3g} MB"
              + (f", model.onnx {size.get('onnx'):.3g} MB" if size.get("onnx") else "") + ".", ""]
    if lat:
        lines += [f"Milliseconds per example (median; {lat.get('threads')} CPU thread(s); model only, the featurizer "
                  "not included), measured when this folder was written:", "",
                  "| runtime | batch 1 | batch 64 |", "|---|---|---|",
                  f"| torch | {lat['torch_b1_ms']:.4f} | {lat['torch_b64_ms']:.4f} |"]
        if "onnx_b1_ms" in lat:
            lines.append(f"| onnxruntime | {lat['onnx_b1_ms']:.4f} | {lat['onnx_b64_ms']:.4f} |")
        lines.append("")
    lines += ["## ONNX", ""]
    if onnx.get("exported"):
        ins = onnx.get("inputs") or {}
        ins = (f"input `features` float32 (batch, {ins['features'][1]})" if set(ins) == {"features"} else
               "inputs " + " and ".join(f"`{k}` int64 ({', '.join(map(str, v))})" for k, v in ins.items()))
        outs = " and ".join(f"`{k}`" for k in onnx.get("outputs") or {"logits": 0, "probs": 0})
        lines += [f"`model.onnx` (opset {onnx.get('opset')}): {ins}, output{'s' if ' and ' in outs else ''} {outs} "
                  f"(batch, {r.get('n_classes')}); the batch{'' if 'features' in ins else ' and length'} "
                  f"ax{'i' if 'features' in ins else 'e'}s {'is' if 'features' in ins else 'are'} dynamic. Checked with onnxruntime on "
                  f"{onnx['checked_rows']} validation rows: "
                  f"max |p_onnx - p_torch| = {onnx['max_abs_diff']:.2e} (tolerance {onnx['tolerance']:g}).", ""]
    else:
        lines += [f"Not exported: {onnx.get('why')}. Use the torch runtime.", ""]
    feat = r.get("featurizer", {}).get("kind")
    lines += ["## Use", "", "```",
              f"mentor predict {'MODEL_DIR'} NEW_DATA.parquet --out predictions.parquet [--runtime torch|onnx]", "```", "",
              _inputs_sentence(data.get("inputs") or {}, feat),
              "The output has `id`, `label` (the class name) and one `prob_<class>` column per class.", ""]
    lines += ["## Intended use and limits", "",
              f"- For inputs like the `{data.get('name')}` data it was trained on; it has not been evaluated on anything "
              "else, and its accuracy on other inputs is unknown.",
              "- It learned from the teacher's outputs on the pool, so it inherits the teacher's errors and biases "
              "(the method corrects some of them using V, not all).",
              "- Its probabilities are as calibrated as the ECE above says; recalibrate on your own labeled data "
              "before thresholding them.",
              f"- The featurizer (`{feat}`) runs in Python before the model (torch or ONNX); the ONNX graph alone "
              "expects featurised inputs.", ""]
    lines += ["## Files", "", "| file | holds |", "|---|---|",
              f"| `{CONFIG_FILE}` | format version, student kind and constructor args, classes, inputs, teacher, "
              "metrics, ONNX check, latency, the run's config |",
              f"| `{WEIGHTS_FILE}` | the weights (safetensors) |",
              f"| `{FEATURIZER_FILE}`, `{FEATURIZER_ARRAYS}` | the featurizer's state (JSON; arrays in safetensors) |",
              f"| `{ONNX_FILE}` | the ONNX graph (when exported) |", "| `README.md` | this card |", "",
              "Nothing in the folder is a pickle: `mentor.students.export.load_student_folder(MODEL_DIR)` reads it "
              "back as (model, featurizer, record).", ""]
    return "\n".join(lines)


def _inputs_sentence(inputs: dict, feat: str | None) -> str:
    if inputs.get("kind") == "text":
        how = f"a text column `{inputs.get('text_column', 'text')}`"
    elif inputs.get("columns"):
        cols = inputs["columns"]
        how = f"the numeric column(s) {', '.join(f'`{c}`' for c in cols[:10])}{', ...' if len(cols) > 10 else ''}"
    else:
        how = f"{inputs.get('n_features')} numeric features (one vector column, or that many numeric columns)"
    prep = {"tfidf": "turned into TF-IDF vectors", "standardize": "standardised with the training mean and scale",
            "identity": "used as they are"}.get(feat, f"featurised ({feat})")
    return (f"New data: Parquet, CSV or NPZ with an id column `{inputs.get('id_column', 'id')}` and {how}; "
            f"the inputs are {prep} in Python, then the model runs.")
