"""The labeling task an LLM is asked: labels, instructions, few-shot examples, the prompt, and
how a free-text answer is read back as a label.

Plain functions and one small frozen object (`LLMTask`), so the same prompt is built for a local
model and a server, and so the teacher's fingerprint can cover every part of it.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError, DataError

TEXT_SLOT = "{text}"
DEFAULT_INSTRUCTIONS = "Classify the text into exactly one of these labels:"
# `{instructions}` (with the label list), `{examples}` (few-shot block, may be empty), `{text}`.
# Ends with "Answer:" so each label's verbalizer (" label") is the prompt's natural continuation.
DEFAULT_TEMPLATE = "{instructions}\n\n{examples}Text: {text}\nAnswer:"
SHOT_TEMPLATE = "Text: {text}\nAnswer: {label}\n\n"


@dataclass(frozen=True)
class LLMTask:
    """What the LLM is asked. `labels` are the data's classes in order; `verbalizers` the text
    that stands for each label in the prompt and the answer (default: the label itself)."""

    labels: tuple[str, ...]
    verbalizers: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    instructions: str = DEFAULT_INSTRUCTIONS
    template: str = DEFAULT_TEMPLATE

    @classmethod
    def build(cls, labels, *, verbalizers: dict | None = None, descriptions: dict | None = None,
              instructions: str | None = None, template: str | None = None) -> "LLMTask":
        """Validate once, at the boundary: every problem here is the user's config, named with its fix."""
        labels = tuple(str(x) for x in labels)
        verbalizers, descriptions = dict(verbalizers or {}), dict(descriptions or {})
        for what, given in (("verbalizers", verbalizers), ("descriptions", descriptions)):
            unknown = sorted(set(given) - set(labels))
            if unknown:
                raise ConfigError(f"teacher.llm.{what} names {unknown}, which are not labels of the data "
                                  f"({list(labels)}); fix the spelling or remove them.")
        verb = tuple(str(verbalizers.get(x, x)).strip() for x in labels)
        empty = [x for x, v in zip(labels, verb) if not v]
        if empty:
            raise ConfigError(f"label(s) {empty} have an empty verbalizer; give each label some text in "
                              "teacher.llm.verbalizers.")
        seen: dict[str, str] = {}
        for x, v in zip(labels, verb):
            key = normalize_answer(v)
            if key in seen:
                raise ConfigError(f"labels {seen[key]!r} and {x!r} have the same verbalizer {v!r} (after normalising "
                                  "case and punctuation): the LLM's answer could not tell them apart. Give them "
                                  "distinct texts in teacher.llm.verbalizers.")
            seen[key] = x
        template = DEFAULT_TEMPLATE if template is None else template
        if TEXT_SLOT not in template:
            raise ConfigError(f"teacher.llm.template has no {TEXT_SLOT} slot, so the example would never reach the "
                              f"LLM; put {TEXT_SLOT} where the example's text goes (slots: {{instructions}}, "
                              "{examples}, {text}).")
        try:
            template.format(instructions="", examples="", text="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"teacher.llm.template cannot be filled ({type(e).__name__}: {e}); the slots are "
                              "{instructions}, {examples} and {text}; write other braces doubled ({{ }}).") from None
        desc = tuple(str(descriptions.get(x, "")).strip() for x in labels)
        return cls(labels, verb, desc, DEFAULT_INSTRUCTIONS if instructions is None else instructions, template)

    def instructions_block(self) -> str:
        """The instructions, the labels inline (a bulleted list makes chat models answer "- label"),
        one line per label that has a description, and a request for the label alone."""
        lines = [f"{self.instructions.rstrip()} {', '.join(self.verbalizers)}."]
        lines += [f"{v}: {d}" for v, d in zip(self.verbalizers, self.descriptions or [""] * len(self.labels)) if d]
        lines.append("Reply with the label only.")
        return "\n".join(lines)

    def describe(self) -> dict:
        return {"labels": list(self.labels), "verbalizers": list(self.verbalizers),
                "descriptions": list(self.descriptions), "instructions": self.instructions, "template": self.template}


def render_prompt(task: LLMTask, text: str, shots: list[tuple[str, int]] = ()) -> str:
    """The prompt for one example; `shots` are (text, label index) pairs from A."""
    examples = "".join(SHOT_TEMPLATE.format(text=_one_line(t), label=task.verbalizers[y]) for t, y in shots)
    return task.template.format(instructions=task.instructions_block(), examples=examples, text=_one_line(text))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_texts(texts, ids=None) -> list[str]:
    """Texts an LLM can read: strings, not empty. Bytes must be UTF-8 (never guessed)."""
    out = []
    for i, t in enumerate(texts):
        where = f"id {ids[i]!r}" if ids is not None else f"row {i}"
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"the text of {where} is not UTF-8 ({e.reason} at byte {e.start}); re-encode the "
                                "file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
        if not isinstance(t, str):
            raise DataError(f"the LLM teacher reads text, but {where} holds {type(t).__name__}; "
                            "use a text data set (data.text_column).")
        if not t.strip():
            raise DataError(f"the text of {where} is empty; an LLM cannot label it. Drop empty rows from the data.")
        out.append(t)
    return out


def truncate_to_fit(task: LLMTask, text: str, shots, count_tokens, max_prompt_tokens: int) -> tuple[str, bool]:
    """Shorten the example's text (never the instructions or the shots) until the prompt fits
    `max_prompt_tokens`; returns (text, truncated). Raises when even an empty text does not fit."""
    if count_tokens(render_prompt(task, text, shots)) <= max_prompt_tokens:
        return text, False
    if count_tokens(render_prompt(task, "", shots)) > max_prompt_tokens:
        raise ConfigError(f"the prompt without the example's text already takes more than {max_prompt_tokens} tokens "
                          "(the model's context less the answer); shorten teacher.llm.instructions or use fewer shots.")
    words = _one_line(text).split(" ")
    lo, hi = 0, len(words)  # binary search on the number of words kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(render_prompt(task, " ".join(words[:mid]), shots)) <= max_prompt_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]), True


# ---------------------------------------------------------------------------------- few-shot examples

def choose_shots(selection: str, labels_a: np.ndarray, n_classes: int, k: int, seed: int) -> list[int]:
    """Fixed shots (positions in A): `per-class` takes k examples of each class, seeded."""
    if k == 0 or selection == "none":
        return []
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(n_classes):
        where = np.flatnonzero(labels_a == c)
        chosen.extend(rng.choice(where, size=min(k, len(where)), replace=False).tolist())
    order = rng.permutation(len(chosen))  # classes interleaved, so the last shot is not always the last class
    return [int(chosen[i]) for i in order]


def similar_shots(query_emb: np.ndarray, a_emb: np.ndarray, k: int) -> np.ndarray:
    """Positions in A of the k most similar examples to each query (cosine on unit embeddings),
    most similar last (nearest the example, where a causal LM weighs it most)."""
    sims = query_emb @ a_emb.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return top[:, ::-1]


# ------------------------------------------------------------------------------- reading an answer

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(str(text).lower().translate(_PUNCT).split())


def parse_answer(answer: str, task: LLMTask, *, cutoff: float = 0.8) -> int | None:
    """The label an answer names: exact, then normalised, then the one label mentioned as a whole
    word, then the closest spelling; None (an abstention) when none fits — never a guess."""
    a = str(answer).strip()
    for i, v in enumerate(task.verbalizers):
        if a == v:
            return i
    norm = normalize_answer(a)
    keys = [normalize_answer(v) for v in task.verbalizers]
    for prefix in ("answer ", "label ", "the answer is ", "the label is "):
        norm = norm.removeprefix(prefix)
    if norm in keys:
        return keys.index(norm)
    found = [i for i, key in enumerate(keys) if re.search(rf"\b{re.escape(key)}\b", norm)]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(norm, keys, n=2, cutoff=cutoff)
    if len(close) == 1 or (close and difflib.SequenceMatcher(None, norm, close[0]).ratio() >
                           difflib.SequenceMatcher(None, norm, close[1]).ratio()):
        return keys.index(close[0])
    return None
