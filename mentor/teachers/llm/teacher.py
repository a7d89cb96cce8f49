"""`LLMTeacher`: an LLM (a server speaking the OpenAI protocol, or a local causal LM) as a mentor
teacher that gives a probability for every label, its raw answer, and what each call cost.

The teacher builds the prompt (`task`), asks a backend (`local.LocalLM` or `endpoint.Endpoint`,
wrapped by `backends`), turns the answer into probabilities (`scoring`) and prices the tokens.
The store keeps all of it (`TeacherAnswer.extras`), so every answer is paid once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError, MentorError
from ...store.core import CallNotSent
from ..base import Teacher, TeacherAnswer
from . import scoring as sc
from .task import LLMTask, check_texts, parse_answer, render_prompt, similar_shots, truncate_to_fit
from .usage import Usage


class SpendingCapReached(MentorError, CallNotSent):
    """The next call would take the teacher's spend past `max_spend`; what was paid is kept, and
    the refused call (never sent) is not on the bill."""


@dataclass(frozen=True)
class Prices:
    """Money per million tokens; cached input tokens are priced separately where servers report them."""
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None

    def cost(self, u: Usage) -> float:
        cached = min(u.cached_input_tokens, u.input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((u.input_tokens - cached) * self.input + cached * cached_price + u.output_tokens * self.output) / 1e6

    @property
    def free(self) -> bool:
        return self.input == 0 and self.output == 0 and not self.cached_input


@dataclass
class Shots:
    """Few-shot examples drawn from A: fixed (`ids` positions) or the most similar per example."""
    selection: str = "none"             # none | per-class | similar
    texts: list[str] | None = None      # A's texts
    labels: np.ndarray | None = None    # A's labels
    ids: list[str] | None = None        # A's ids (recorded)
    fixed: list[int] | None = None      # per-class: positions in A
    k: int = 0                          # similar: shots per example
    embed: object = None                # similar: texts -> unit embeddings (MiniLM)
    a_emb: np.ndarray | None = None

    def describe(self) -> dict:
        if self.selection == "per-class":
            return {"selection": "per-class", "ids": [self.ids[i] for i in self.fixed]}
        if self.selection == "similar":
            digest = hashlib.sha256("\x00".join(f"{i}\x01{y}" for i, y in zip(self.ids, self.labels))
                                    .encode()).hexdigest()[:16]
            return {"selection": "similar", "k": self.k, "encoder": "all-MiniLM-L6-v2", "labeled_set": digest}
        return {"selection": "none"}

    def positions(self, texts: list[str]) -> list[list[int]]:
        """Each text's shots as positions in A (embedding the texts once, for `similar`)."""
        if self.selection == "per-class":
            return [list(self.fixed)] * len(texts)
        if self.selection == "similar":
            return [row.tolist() for row in similar_shots(self.embed(texts), self.a_emb, self.k)]
        return [[] for _ in texts]

    def pairs(self, positions: list[int]) -> list[tuple[str, int]]:
        """(text, label) of the shots at these positions in A."""
        return [(self.texts[i], int(self.labels[i])) for i in positions]


class LLMTeacher(Teacher):
    """An LLM labeling text. `backend` gives raw scores (see `backends`); the rest is configuration
    recorded in the fingerprint, so a changed prompt never mixes with stored answers."""

    kind = "llm"

    def __init__(self, task: LLMTask, backend, *, scoring: str = "label-likelihood", fallback: str = "stop",
                 samples: int = 5, temperature: float = 0.7, pseudo_count: float = 0.5, smoothing: float = 0.1,
                 max_answer_tokens: int = 8, calibrate: bool = False, prices: Prices = Prices(),
                 max_spend: float | None = None, shots: Shots | None = None, seed: int = 0,
                 prompt_format: str = "chat"):
        if scoring not in sc.SCORING_MODES:
            raise ConfigError(f"unknown scoring mode {scoring!r}; choose one of {', '.join(sc.SCORING_MODES)}.")
        if calibrate and scoring != "label-likelihood":
            raise ConfigError("teacher.llm.calibrate subtracts content-free label scores, which only the "
                              "label-likelihood scoring has; remove calibrate or use scoring: label-likelihood.")
        if prompt_format not in ("chat", "plain"):
            raise ConfigError(f"prompt_format must be 'chat' or 'plain', got {prompt_format!r}.")
        self.task, self.backend, self.scoring, self.fallback = task, backend, scoring, fallback
        self.prompt_format = prompt_format
        self.samples, self.temperature, self.pseudo_count = int(samples), float(temperature), float(pseudo_count)
        self.smoothing, self.max_answer_tokens, self.calibrate = float(smoothing), int(max_answer_tokens), calibrate
        self.prices, self.max_spend, self.shots, self.seed = prices, max_spend, shots or Shots(), int(seed)
        self.n_classes = len(task.labels)
        self.classes = list(task.labels)
        self.spent = 0.0               # money spent by this teacher object (plus `spent_before`)
        self.spent_before = 0.0        # what the store had already paid (set by the pipeline)
        self.counts = {"truncated": 0, "abstained": 0, "fallback": 0}
        self._lock = threading.Lock()
        self._content_free = None
        self._mode = scoring           # the mode in use (differs from `scoring` after a fallback)
        self.fingerprint = "llm-" + hashlib.sha256(json.dumps(self._identity(), sort_keys=True)
                                                  .encode()).hexdigest()[:20]

    # -------------------------------------------------------------------------------- identity

    def _identity(self) -> dict:
        """Everything that changes the answers: model, scoring, prompt, labels, shots."""
        ident = {"model": self.backend.identity(), "scoring": self.scoring, "task": self.task.describe(),
                 "shots": self.shots.describe(), "max_prompt_tokens": self.backend.max_prompt_tokens(
                     self.max_answer_tokens)}
        if self.scoring == "label-likelihood":
            ident["calibrate"] = self.calibrate
            ident["prompt_format"] = self.prompt_format
        if self.scoring == "sampling" or self.fallback == "sampling":
            ident.update(samples=self.samples, temperature=self.temperature, pseudo_count=self.pseudo_count,
                         seed=self.seed, max_answer_tokens=self.max_answer_tokens)
        if self.scoring == "single-answer":
            ident.update(smoothing=self.smoothing, max_answer_tokens=self.max_answer_tokens)
        if self.scoring == "top-logprobs":
            ident["fallback"] = self.fallback
        return ident

    def describe(self) -> dict:
        return {**super().describe(), **self._identity(), "prices": vars(self.prices), "max_spend": self.max_spend}

    @property
    def cost_per_example(self) -> float:  # the ledger's estimate before a call; `answer` gives the real cost
        return getattr(self, "_est_cost", 0.0)

    @cost_per_example.setter
    def cost_per_example(self, value: float) -> None:
        self._est_cost = float(value)

    # -------------------------------------------------------------------------------- prompts

    @property
    def _chat_scored(self) -> bool:
        """Label likelihood scored as the assistant's answer in the chat template."""
        return self._mode == "label-likelihood" and self.prompt_format == "chat"

    def _wrap(self, prompt: str) -> str:
        return self.backend.chat_wrap(prompt) if self._chat_scored else prompt

    def prompts(self, texts: list[str]) -> tuple[list[str], list[bool], list[list[int]]]:
        """Each example's prompt, its text shortened where the prompt (in the chat template, when
        scored so) would not fit the context; and its shots' positions in A."""
        limit = self.backend.max_prompt_tokens(self.max_answer_tokens)
        count = (lambda p: self.backend.count_tokens(self._wrap(p))) if self._chat_scored else self.backend.count_tokens
        out, cut, where = [], [], self.shots.positions(texts)
        for text, pos in zip(texts, where):
            shots = self.shots.pairs(pos)
            t, was_cut = truncate_to_fit(self.task, text, shots, count, limit)
            out.append(self._wrap(render_prompt(self.task, t, shots)))
            cut.append(was_cut)
        return out, cut, where

    def _verbalizers(self) -> list[str]:
        """What follows the prompt for each label: the answer itself in a chat turn, ' label' after 'Answer:'."""
        return list(self.task.verbalizers) if self._chat_scored else [" " + v for v in self.task.verbalizers]

    def estimate(self, texts: list[str]) -> dict:
        """Expected tokens and cost of labeling `texts`, from token counts alone (nothing is sent)."""
        prompts, cut, _ = self.prompts(check_texts(texts))
        u = Usage()
        for p in prompts:
            u = u + self.backend.expected_usage(self._mode, p, list(self.task.verbalizers),
                                                samples=self.samples, max_answer_tokens=self.max_answer_tokens)
        n = max(len(prompts), 1)
        return {"examples": len(prompts), "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                "cost": self.prices.cost(u), "cost_per_example": self.prices.cost(u) / n,
                "tokens_per_example": (u.input_tokens + u.output_tokens) / n, "truncated": int(sum(cut)),
                "scoring": self._mode}

    # -------------------------------------------------------------------------------- calls

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.answer(inputs, ids).probs

    def answer(self, inputs, ids=None) -> TeacherAnswer:
        texts = check_texts(list(inputs), ids)
        prompts, cut, shot_pos = self.prompts(texts)
        self._check_cap(prompts)
        mode = self._mode
        if mode == "top-logprobs":
            try:
                probs, extras, usages = self._top_logprobs(prompts)
            except self.backend.LogprobsUnavailable as e:
                if self.fallback != "sampling":
                    raise ConfigError(f"{e} Set teacher.llm.fallback: sampling to sample answers instead, or use "
                                      "scoring: label-likelihood / sampling.") from None
                with self._lock:
                    if self._mode == "top-logprobs":
                        self._mode = "sampling"
                        warnings.warn(f"{e} Falling back to scoring: sampling (teacher.llm.fallback), recorded per "
                                      "row in the store's `scoring` column.", stacklevel=2)
                mode = "sampling"
        if mode == "label-likelihood":
            probs, extras, usages = self._label_likelihood(prompts)
        elif mode == "sampling":
            probs, extras, usages = self._sampled(prompts, n=self.samples, temperature=self.temperature)
        elif mode == "single-answer":
            probs, extras, usages = self._sampled(prompts, n=1, temperature=0.0)
        costs = [self.prices.cost(u) for u in usages]
        with self._lock:
            self.spent += float(sum(costs))
            self.counts["truncated"] += int(sum(cut))
            self.counts["abstained"] += int(sum(extras.get("abstained", [])))
        extras.update(scoring=[mode] * len(texts), truncated=cut,
                      input_tokens=[u.input_tokens for u in usages], output_tokens=[u.output_tokens for u in usages],
                      cached_input_tokens=[u.cached_input_tokens for u in usages], cost=costs)
        if self.shots.selection == "similar":  # fixed shots are in the fingerprint; these differ per row
            extras["shots"] = [json.dumps([self.shots.ids[i] for i in row]) for row in shot_pos]
        return TeacherAnswer(np.asarray(probs, dtype=np.float32), extras, float(sum(costs)))

    def _check_cap(self, prompts: list[str]) -> None:
        if self.max_spend is None or self.prices.free:
            return
        est = self.prices.cost(sum((self.backend.expected_usage(self._mode, p, list(self.task.verbalizers),
                                                                  samples=self.samples,
                                                                  max_answer_tokens=self.max_answer_tokens)
                                    for p in prompts), Usage()))
        with self._lock:
            total = self.spent_before + self.spent
            if total + est > self.max_spend:
                raise SpendingCapReached(
                    f"the LLM teacher has spent {total:.4f} of its cap teacher.llm.max_spend={self.max_spend:g}, and "
                    f"the next call ({len(prompts)} examples) is expected to cost {est:.4f}. Everything paid for so "
                    "far is stored. Raise max_spend to label more, or label a smaller pool (split.n_pool).")

    def _label_likelihood(self, prompts):
        verb = self._verbalizers()
        scores, usages = self.backend.label_logprobs(prompts, verb)
        cf = None
        if self.calibrate:
            if self._content_free is None:
                empty = self.prompts_content_free()
                self._content_free = self.backend.label_logprobs(empty, verb)[0].mean(axis=0)
            cf = self._content_free
        probs = sc.label_likelihood_probs(scores, cf)
        raw = [json.dumps({v: round(float(s), 4) for v, s in zip(self.task.verbalizers, row)}) for row in scores]
        return probs, {"raw": raw, "abstained": [False] * len(prompts)}, usages

    def prompts_content_free(self) -> list[str]:
        """Content-free prompts (Zhao et al., 2021): the same prompt around texts that say nothing."""
        return [self._wrap(render_prompt(self.task, t, s)) for t in ("N/A", "[MASK]", "")
                for s in [self.shots.pairs(self.shots.positions(["N/A"])[0])]]

    def _top_logprobs(self, prompts):
        probs, raw, cov, abst, usages = [], [], [], [], []
        for p in prompts:
            top, text, u = self.backend.top_logprobs(p, k=20)
            row, coverage = sc.top_logprobs_probs(top, list(self.task.verbalizers))
            probs.append(row)
            cov.append(coverage)
            abst.append(coverage == 0.0)
            raw.append(json.dumps({"answer": text, "top": {t: round(float(v), 4) for t, v in top.items()}}))
            usages.append(u)
        return np.array(probs), {"raw": raw, "coverage": cov, "abstained": abst}, usages

    def _sampled(self, prompts, *, n: int, temperature: float):
        probs, raw, abst, bad, usages = [], [], [], [], []
        for j, p in enumerate(prompts):
            answers, u = self.backend.sample(p, n=n, temperature=temperature, max_tokens=self.max_answer_tokens,
                                             seed=self.seed)
            parsed = [parse_answer(a, self.task) for a in answers]
            if n == 1:
                row, n_bad = sc.single_answer_probs(parsed[0], self.n_classes, self.smoothing), int(parsed[0] is None)
            else:
                row, n_bad = sc.sampled_probs(parsed, self.n_classes, self.pseudo_count)
            probs.append(row)
            raw.append(json.dumps(answers))
            bad.append(n_bad)
            abst.append(n_bad == len(answers))
            usages.append(u)
        return np.array(probs), {"raw": raw, "unparsed": bad, "abstained": abst}, usages


# ------------------------------------------------------------------------------------ from a config

def build_llm_teacher(cfg, *, labels, a_texts, a_labels, a_ids, seed: int = 0) -> LLMTeacher:
    """An `LLMTeacher` from a `config.LLMConfig`; few-shot examples come from A only (texts,
    labels, ids of the labeled set), so V and the pool stay unseen by the prompt."""
    from .backends import EndpointBackend, LocalBackend
    from .task import choose_shots
    task = LLMTask.build(labels, verbalizers=cfg.verbalizers, descriptions=cfg.descriptions,
                         instructions=cfg.instructions, template=cfg.template)
    if cfg.endpoint is not None:
        from .endpoint import Endpoint
        e = cfg.endpoint
        ep = Endpoint(e.url, e.model, api_key_env=e.api_key_env, timeout_s=e.timeout_s, max_retries=e.max_retries,
                      requests_per_minute=cfg.requests_per_minute, tokens_per_minute=cfg.tokens_per_minute)
        backend = EndpointBackend(ep, tokenizer=_tokenizer(e.tokenizer) if e.tokenizer else None,
                                  context_tokens=e.context_tokens)
    else:
        from .local import load_local_lm
        loc = cfg.local
        lm = load_local_lm(loc.path if loc else None, gguf_file=loc.gguf_file if loc else None,
                           device=loc.device if loc else "auto")
        backend = LocalBackend(lm, batch_size=loc.batch_size if loc else 8)
    a_labels = np.asarray(a_labels)
    shots = Shots()
    if cfg.shots > 0 and cfg.shot_selection != "none":
        a_texts = check_texts(list(a_texts), a_ids)
        shots = Shots(cfg.shot_selection, list(a_texts), a_labels, [str(i) for i in a_ids], k=cfg.shots)
        if cfg.shot_selection == "per-class":
            shots.fixed = choose_shots("per-class", a_labels, len(task.labels), cfg.shots, seed)
        else:
            from ..encoder import EncoderTeacher
            shots.embed = EncoderTeacher.embed
            shots.a_emb = shots.embed(a_texts)
    prices = Prices(cfg.price_input, cfg.price_output, cfg.price_cached_input)
    return LLMTeacher(task, backend, scoring=cfg.scoring, fallback=cfg.fallback, samples=cfg.samples,
                      temperature=cfg.temperature, pseudo_count=cfg.pseudo_count, smoothing=cfg.smoothing,
                      max_answer_tokens=cfg.max_answer_tokens, calibrate=cfg.calibrate, prices=prices,
                      max_spend=cfg.max_spend, shots=shots, seed=seed, prompt_format=cfg.prompt_format)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    """A tokenizer to count a server model's tokens: a Hugging Face folder or a GGUF file. Kept
    per path: reading one from a GGUF file parses the whole file (~10 s; minutes on a busy machine)."""
    from pathlib import Path

    from transformers import AutoTokenizer
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"teacher.llm.endpoint.tokenizer {path} does not exist; give a tokenizer folder or a "
                          ".gguf file, or remove it (token counts are then estimated from characters).")
    if p.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return AutoTokenizer.from_pretrained(str(p))
