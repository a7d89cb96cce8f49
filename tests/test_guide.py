"""GUIDE and the other initialisers on tiny random Llama configs (no download)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from mentor.lm import guide
from mentor.errors import ConfigError


def _llama(seed=0, hidden=32, heads=4, kv=2, head_dim=8, inter=48, layers=3, vocab=64, tie=True):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                      tie_word_embeddings=tie, attn_implementation="eager")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains, so folding them is really tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return model


def _block(model, x):
    pos = torch.arange(x.shape[1])[None]
    pe = model.model.rotary_emb(x, pos)
    with torch.no_grad():
        return model.model.layers[0](x, position_embeddings=pe, attention_mask=None)


@pytest.mark.parametrize("tie", [True, False])
def test_full_width_guide_first_block_is_teacher_block_times_M(tie):
    teacher = _llama(0, tie=tie)
    student = _llama(1, tie=tie)  # same widths, other random weights
    info = guide.initialize_student(student, teacher, "guide", center=False)
    assert info["norm_scale"] == 1.0 and info["rope_exact"]
    M = guide.pca_directions(teacher.model.embed_tokens.weight, 32).components.float()
    assert torch.allclose(M.T @ M, torch.eye(32), atol=1e-5)
    assert torch.allclose(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight @ M, atol=1e-5)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(_block(student, x @ M), _block(teacher, x) @ M, atol=1e-4)
    # later blocks stay random (not the teacher's)
    assert not torch.allclose(student.model.layers[1].self_attn.q_proj.weight,
                              teacher.model.layers[1].self_attn.q_proj.weight)


def test_layer_copy_and_full_width_weight_selection_reproduce_teacher_logits():
    teacher = _llama(0, layers=3)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = teacher(ids).logits
    for method in ("layer-copy", "weight-selection"):
        student = _llama(5, layers=3)
        guide.initialize_student(student, teacher, method, layers=[0, 1, 2])
        with torch.no_grad():
            assert torch.allclose(student(ids).logits, ref, atol=1e-4), method


def test_rotary_pairs_commute_with_rope():
    # selecting rotary pairs of a rotated teacher head == rotating the selected dims with the student's RoPE
    t_cfg, s_cfg = _llama(0, head_dim=16, hidden=64).config, _llama(0, head_dim=8, hidden=32).config
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    x = torch.randn(1, 2, 5, 16)
    pos = torch.arange(5)[None]
    cos_t, sin_t = LlamaRotaryEmbedding(t_cfg)(x, pos)
    cos_s, sin_s = LlamaRotaryEmbedding(s_cfg)(x, pos)
    dims = guide.rotary_dims(16, 8)
    rot_t, _ = apply_rotary_pos_emb(x, x, cos_t, sin_t)
    rot_s, _ = apply_rotary_pos_emb(x[..., dims], x[..., dims], cos_s, sin_s)
    assert torch.allclose(rot_t[..., dims], rot_s, atol=1e-5)


def test_gqa_selection_keeps_q_heads_with_their_kv_head():
    t = {"kv": 4, "group": 3, "head_dim": 4, "heads": 12}
    s = {"kv": 2, "group": 2, "head_dim": 2, "heads": 4}
    q_rows, kv_rows = guide.head_rows(t, s)
    q_heads = (q_rows // 4).view(4, 2)[:, 0]
    kv_heads = (kv_rows // 4).view(2, 2)[:, 0]
    assert kv_heads.tolist() == [0, 2]
    assert (q_heads // 3).tolist() == [0, 0, 2, 2]  # each student q head's teacher kv group
    assert (q_rows % 4).view(4, 2)[0].tolist() == [0, 2]  # rotary pair (0, 0 + 4/2)


@pytest.mark.parametrize("center", [False, True])
def test_pca_reconstruction_error_is_discarded_variance(center):
    g = torch.Generator().manual_seed(0)
    E = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g,
                                                                              dtype=torch.float64) + 3.0
    for d in (1, 5, 12):
        pca = guide.pca_directions(E, d, center=center)
        Ec = E - pca.mean
        M = pca.components
        err = float(((Ec - Ec @ M @ M.T) ** 2).sum())
        assert err == pytest.approx(pca.discarded, rel=1e-8, abs=1e-8)


def test_smaller_student_guide_and_weight_selection_run():
    teacher = _llama(0, hidden=32, heads=4, kv=2, head_dim=8, inter=48, layers=3)
    for method in ("guide", "weight-selection", "random"):
        student = _llama(2, hidden=16, heads=2, kv=1, head_dim=4, inter=20, layers=2)
        info = guide.initialize_student(student, teacher, method, center=True)
        with torch.no_grad():
            out = student(torch.randint(0, 64, (2, 6))).logits
        assert torch.isfinite(out).all(), method
        assert info["method"] == method


def test_refuses_bad_students():
    teacher = _llama(0)
    with pytest.raises(ConfigError, match="hidden size 48 is larger"):
        guide.initialize_student(_llama(1, hidden=48, heads=4, head_dim=8), teacher, "guide")
    with pytest.raises(ConfigError, match="attention heads 8 is larger"):
        guide.initialize_student(_llama(1, heads=8, kv=2, head_dim=4), teacher, "guide")
    with pytest.raises(ConfigError, match="head dim 16 is larger"):
        guide.initialize_student(_llama(1, heads=2, kv=2, head_dim=16), teacher, "guide")
    with pytest.raises(ConfigError, match="vocab_size 80 differs"):
        guide.initialize_student(_llama(1, vocab=80), teacher, "guide")
    with pytest.raises(ConfigError, match="layer-copy needs the teacher's widths"):
        guide.initialize_student(_llama(1, hidden=16, heads=2, kv=1), teacher, "layer-copy")
    with pytest.raises(ConfigError, match="blocks but the teacher only"):
        guide.initialize_student(_llama(1, layers=5), teacher, "weight-selection")
    with pytest.raises(ConfigError, match="unknown init method"):
        guide.initialize_student(_llama(1), teacher, "pca")
    with pytest.raises(ConfigError, match="not a Llama-style decoder"):
        guide.initialize_student(torch.nn.Linear(2, 2), teacher, "guide")


def test_refuses_mismatched_tokenizers():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def tok(words):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
            {w: i for i, w in enumerate(words)}, unk_token=words[0])))

    teacher, student = _llama(0), _llama(1)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        guide.initialize_student(student, teacher, "guide", teacher_tokenizer=tok(["<unk>", "a", "b"]),
                                 student_tokenizer=tok(["<unk>", "a", "c"]))
    guide.initialize_student(student, teacher, "guide", teacher_tokenizer=tok(["<unk>", "a"]),
                             student_tokenizer=tok(["<unk>", "a"]))


def test_student_config_keeps_family():
    t = _llama(0).config
    s = guide.student_config(t, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    assert (s.vocab_size, s.head_dim, s.intermediate_size, s.num_hidden_layers) == (64, 8, 24, 2)
    assert t.hidden_size == 32  # the teacher's config is not changed
