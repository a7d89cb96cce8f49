"""One interface over a local causal LM (`local.LocalLM`) and an OpenAI-compatible server
(`endpoint.Endpoint`), so `LLMTeacher` does not care which it talks to.

A backend gives: `identity()` (what the fingerprint records), `count_tokens`, `max_prompt_tokens`,
`expected_usage` (for estimates and the spending cap), and the three calls the scoring modes
need: `label_logprobs`, `top_logprobs`, `sample`.
"""

from __future__ import annotations

import numpy as np

from ...credentials import redact_url
from ...errors import ConfigError
from .endpoint import LogprobsUnavailable
from .usage import Usage

CHARS_PER_TOKEN = 4  # rough count for a server whose tokenizer is not at hand (estimates only)


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


class LocalBackend:
    """A causal LM on this machine: exact scores, tokens counted with its tokenizer, no price."""

    name = "local"
    LogprobsUnavailable = LogprobsUnavailable

    def __init__(self, lm, *, batch_size: int = 8):
        self.lm, self.batch_size = lm, int(batch_size)

    def identity(self) -> dict:
        return {"backend": "local", "model": self.lm.fingerprint}

    def count_tokens(self, text: str) -> int:
        return int(self.lm.count_tokens([text])[0])

    def chat_wrap(self, prompt: str) -> str:
        return self.lm.chat_prompt(prompt)

    def max_prompt_tokens(self, max_answer_tokens: int) -> int:
        return int(self.lm.max_tokens) - max(int(max_answer_tokens), 16)

    def expected_usage(self, mode, prompt, verbalizers, *, samples, max_answer_tokens) -> Usage:
        n = self.count_tokens(prompt)
        if mode == "label-likelihood":  # the prompt once, each label's tokens once (shared-prefix cache)
            return Usage(n + sum(self.count_tokens(v) for v in verbalizers), 0)
        k = samples if mode == "sampling" else 1
        return Usage(n, k * (1 if mode == "top-logprobs" else max_answer_tokens))

    def label_logprobs(self, prompts, verbalizers):
        scores = np.asarray(self.lm.label_logprobs(prompts, verbalizers, batch_size=self.batch_size), np.float64)
        verb = sum(self.count_tokens(v) for v in verbalizers)
        return scores, [Usage(self.count_tokens(p) + verb, 0) for p in prompts]

    def top_logprobs(self, prompt, k=20):
        """The k most likely first answer tokens in the chat template (what a chat server returns)."""
        import torch
        chat = self.lm.chat_prompt(prompt)
        ids = self.lm.tokenize([chat])[0]
        with self.lm._lock, torch.inference_mode():
            logits = self.lm.model(torch.tensor([ids], device=self.lm.device)).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        val, idx = lp.topk(k)
        top: dict[str, float] = {}
        for v, i in zip(val.tolist(), idx.tolist()):
            tok = self.lm.detokenize([i])
            top[tok] = float(np.logaddexp(top[tok], v)) if tok in top else v  # tokens that decode alike
        return top, self.lm.detokenize([int(idx[0])]), Usage(len(ids), 1)

    def sample(self, prompt, *, n, temperature, max_tokens, seed):
        chat = self.lm.chat_prompt(prompt)
        answers, usages = self.lm.generate([chat], max_new_tokens=max_tokens, n=n, temperature=temperature,
                                           seed=seed, return_usage=True)
        return list(answers[0]), usages[0]


class EndpointBackend:
    """A server speaking the OpenAI protocol; usage (and so cost) is what the server reports."""

    name = "server"
    LogprobsUnavailable = LogprobsUnavailable

    def __init__(self, endpoint, *, tokenizer=None, context_tokens: int | None = None):
        self.ep, self.tokenizer, self.context_tokens = endpoint, tokenizer, context_tokens

    def identity(self) -> dict:
        return {"backend": "server", "url": redact_url(self.ep.base_url), "model": self.ep.model}

    def chat_wrap(self, prompt: str) -> str:
        """The prompt as the user's turn of the model's chat template, ending where the answer starts."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("prompt_format: chat scores labels as the assistant's answer in the model's chat "
                              "template, which needs the model's tokenizer: set teacher.llm.endpoint.tokenizer (a "
                              "tokenizer folder or the model's .gguf file), or set teacher.llm.prompt_format: plain.")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return -(-len(text) // CHARS_PER_TOKEN)

    def max_prompt_tokens(self, max_answer_tokens: int) -> int:
        if self.context_tokens is None:
            return 1 << 30  # unknown context: nothing is cut here (the server's error names the fix)
        return int(self.context_tokens) - max(int(max_answer_tokens), 16)

    def expected_usage(self, mode, prompt, verbalizers, *, samples, max_answer_tokens) -> Usage:
        n = self.count_tokens(prompt)
        if mode == "label-likelihood":  # one echoed completion per label: the prompt is sent once per label
            return Usage(sum(n + self.count_tokens(v) for v in verbalizers), len(verbalizers))
        if mode == "top-logprobs":
            return Usage(n, 1)
        k = samples if mode == "sampling" else 1
        return Usage(n, k * max_answer_tokens)

    def label_logprobs(self, prompts, verbalizers):
        scores, usages = self.ep.label_logprobs(prompts, verbalizers)
        return np.asarray(scores, np.float64), list(usages)

    def top_logprobs(self, prompt, k=20):
        return self.ep.top_logprobs(_messages(prompt), k=k)

    def sample(self, prompt, *, n, temperature, max_tokens, seed):
        if n == 1 and temperature == 0:
            text, u = self.ep.answer(_messages(prompt), max_tokens=max_tokens)
            return [text], u
        return self.ep.sample(_messages(prompt), n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
