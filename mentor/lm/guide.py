"""Initialise a small Llama-style student from a bigger teacher: GUIDE and its baselines.

Works on Hugging Face decoders laid out like `LlamaForCausalLM` (SmolLM2, Llama, Mistral-style):
`model.embed_tokens`, `model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`.

Methods (`METHODS`):

- `random`: the student's own default initialisation, untouched.
- `guide` (reconstructed from the paper's description, see ../shared/methods.md): M = the top-d_S
  principal directions of the rows of the teacher's embedding table (`center` chooses whether the
  rows are centred before the PCA); E_S = E_T·M. The first `n_blocks` blocks (default 1) are the
  teacher's pushed through M: RMSNorm gains are first folded into the matrices that read the
  normalised stream, matrices that read the residual stream become W·M in torch's (out, in)
  layout (Mᵀ·W in the paper's x·W convention) and those writing to it Mᵀ·W (W·M there). Heads,
  per-head dimensions and MLP units are kept at evenly spaced indices, consistently across
  q/k/v/o and gate/up/down. All later blocks keep their random initialisation.
- `weight-selection`: the same evenly spaced selection with no PCA and no folding, applied to
  the embedding and to every block (student block i from teacher block `layers[i]`, by default
  the first n_S teacher blocks) — equivalent to M = columns of the identity at evenly spaced
  indices.
- `layer-copy`: the student has the teacher's widths and fewer blocks; copies the embedding, the
  final norm and the teacher blocks `layers` (default evenly spaced).

Selection rules:
- GQA: kv heads are chosen evenly spaced among the teacher's; inside each chosen kv head's group
  the student's q heads are chosen evenly spaced among that group's q heads, so every student q
  head still attends with the key/value head it was trained with.
- Rotary: Llama's RoPE rotates dimension i with i + ℓ/2, so head dimensions are chosen in such
  pairs. Choosing every s-th pair (s = ℓ_T/ℓ_S) gives exactly the frequencies the student's own
  RoPE uses (θ^(−2i/ℓ_S) = θ^(−2is/ℓ_T)), so positions are encoded as in the teacher. When ℓ_T/ℓ_S
  is not an integer the selection is still evenly spaced but the frequencies only approximate.
- RMSNorm over d_S dimensions of x·M is about sqrt(d_T/d_S) times smaller in scale than over d_T
  dimensions of x when M keeps most of x's energy; with `rescale_norm` (default) GUIDE sets the
  student's norm gains to sqrt(d_T/d_S) to compensate (reconstructed). With d_S = d_T nothing
  changes and the student's first block is exactly the teacher's, expressed in the basis M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

METHODS = ("random", "weight-selection", "guide", "layer-copy")


@dataclass
class PCA:
    """Principal directions of the embedding rows: `components` (d_T, d) orthonormal columns,
    `eigenvalues` (d_T,) of the (centred) second-moment matrix ΣᵢxᵢᵀxᵢT in descending order, and
    the `mean` row (zeros without centring)."""

    components: torch.Tensor
    eigenvalues: torch.Tensor
    mean: torch.Tensor

    @property
    def discarded(self) -> float:
        """Squared Frobenius reconstruction error of the (centred) rows: the discarded eigenvalues."""
        return float(self.eigenvalues[self.components.shape[1]:].sum())


def pca_directions(rows: torch.Tensor, d: int, *, center: bool = False) -> PCA:
    """Top-d principal directions of `rows` (n, D), computed in float64 from the D×D Gram matrix."""
    X = rows.detach().to(torch.float64)
    if not 1 <= d <= X.shape[1]:
        raise ConfigError(f"PCA: cannot keep {d} directions of {X.shape[1]}-dimensional rows.")
    mean = X.mean(0) if center else torch.zeros(X.shape[1], dtype=X.dtype)
    Xc = X - mean
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    # a deterministic sign per direction (largest-magnitude entry positive)
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * torch.where(signs == 0, torch.ones_like(signs), signs)
    return PCA(evecs[:, :d].contiguous(), evals, mean)


def evenly_spaced(n_from: int, n_to: int) -> torch.Tensor:
    """`n_to` of `range(n_from)` at evenly spaced positions starting at 0 (i·n_from // n_to)."""
    if not 1 <= n_to <= n_from:
        raise ConfigError(f"cannot select {n_to} of {n_from} items.")
    return torch.arange(n_to) * n_from // n_to


def rotary_dims(head_dim_t: int, head_dim_s: int) -> torch.Tensor:
    """Teacher head dimensions for a student head: evenly spaced rotary pairs (i, i + ℓ/2)."""
    if head_dim_s % 2 or head_dim_t % 2:
        raise ConfigError(f"head dims must be even for rotary embeddings, got teacher {head_dim_t}, "
                          f"student {head_dim_s}.")
    half = evenly_spaced(head_dim_t // 2, head_dim_s // 2)
    return torch.cat([half, half + head_dim_t // 2])


def _dims(cfg) -> dict:
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"hidden": cfg.hidden_size, "heads": heads, "kv": kv, "head_dim": head_dim,
            "inter": cfg.intermediate_size, "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
            "group": heads // kv}


def _check_llama(model, role: str) -> None:
    inner = getattr(model, "model", None)
    layer = getattr(inner, "layers", [None])[0] if inner is not None else None
    needed = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    if layer is None or not all(hasattr(layer, a) for a in needed) or not hasattr(layer.self_attn, "q_proj"):
        raise ConfigError(f"the {role} is a {type(model).__name__}, not a Llama-style decoder "
                          "(model.layers[i].self_attn.q_proj, .mlp.gate_proj, RMSNorms); GUIDE supports those only.")


def check_compatible(teacher, student, method: str = "guide", *, teacher_tokenizer=None,
                     student_tokenizer=None) -> None:
    """Raise ConfigError unless `method` can initialise `student` from `teacher`."""
    if method not in METHODS:
        raise ConfigError(f"unknown init method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "random":
        return
    _check_llama(teacher, "teacher")
    _check_llama(student, "student")
    t, s = _dims(teacher.config), _dims(student.config)
    if t["vocab"] != s["vocab"]:
        raise ConfigError(f"student vocab_size {s['vocab']} differs from the teacher's {t['vocab']}: "
                          f"{method} needs the student to share the teacher's tokenizer.")
    if teacher_tokenizer is not None and student_tokenizer is not None:
        if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
            raise ConfigError(f"the student's tokenizer differs from the teacher's; {method} maps token rows "
                              "of the teacher's embedding table, so both must use the same tokenizer.")
    checks = [("hidden size", "hidden"), ("attention heads", "heads"), ("key/value heads", "kv"),
              ("heads per key/value group", "group"), ("head dim", "head_dim"),
              ("MLP width (intermediate_size)", "inter")]
    for label, key in checks:
        if s[key] > t[key]:
            raise ConfigError(f"student {label} {s[key]} is larger than the teacher's {t[key]}: {method} only "
                              "shrinks a teacher. Make the student no wider than the teacher.")
    if s["heads"] % s["kv"]:
        raise ConfigError(f"student heads {s['heads']} must be a multiple of its key/value heads {s['kv']}.")
    if method in ("weight-selection", "layer-copy") and s["layers"] > t["layers"]:
        raise ConfigError(f"student has {s['layers']} blocks but the teacher only {t['layers']}; "
                          f"{method} copies one teacher block per student block.")
    if method == "layer-copy":
        diff = [k for k in ("hidden", "heads", "kv", "head_dim", "inter") if s[k] != t[k]]
        if diff:
            raise ConfigError(f"layer-copy needs the teacher's widths; the student differs in {', '.join(diff)}. "
                              "Use guide or weight-selection for a narrower student.")


def head_rows(t: dict, s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher output rows of q_proj and of k_proj/v_proj that the student keeps, in student order."""
    kv_sel = evenly_spaced(t["kv"], s["kv"])
    in_group = evenly_spaced(t["group"], s["group"])
    dims = rotary_dims(t["head_dim"], s["head_dim"])
    q_heads = (kv_sel[:, None] * t["group"] + in_group[None, :]).reshape(-1)
    q_rows = (q_heads[:, None] * t["head_dim"] + dims[None, :]).reshape(-1)
    kv_rows = (kv_sel[:, None] * t["head_dim"] + dims[None, :]).reshape(-1)
    return q_rows, kv_rows


@torch.no_grad()
def transfer_block(t_layer, s_layer, M: torch.Tensor, t: dict, s: dict, *, fold: bool,
                   norm_scale: float = 1.0) -> None:
    """Write teacher block `t_layer`, seen through residual basis M (d_T, d_S), into `s_layer`.

    `fold`: fold the two RMSNorm gains into q/k/v and gate/up and set the student's gains to
    `norm_scale`; otherwise the gains are projected (diag(Mᵀ·diag(g)·M), a selection when M
    selects coordinates).
    """
    q_rows, kv_rows = head_rows(t, s)
    units = evenly_spaced(t["inter"], s["inter"])
    ta, sa, tm, sm = t_layer.self_attn, s_layer.self_attn, t_layer.mlp, s_layer.mlp
    M = M.to(torch.float64)

    def put(dst, value):
        dst.copy_(value.to(dst.dtype))

    def read(src, dst, rows, gain):  # y = x·Wᵀ reads the (normalised) residual stream
        W = src.weight.to(torch.float64)[rows]
        if fold:
            W = W * gain.to(torch.float64)[None, :]
        put(dst.weight, W @ M)
        if src.bias is not None and dst.bias is not None:
            put(dst.bias, src.bias[rows])

    def write(src, dst, cols):  # its output is added to the residual stream
        put(dst.weight, M.T @ src.weight.to(torch.float64)[:, cols])
        if src.bias is not None and dst.bias is not None:
            put(dst.bias, M.T @ src.bias.to(torch.float64))

    g1, g2 = t_layer.input_layernorm.weight, t_layer.post_attention_layernorm.weight
    read(ta.q_proj, sa.q_proj, q_rows, g1)
    read(ta.k_proj, sa.k_proj, kv_rows, g1)
    read(ta.v_proj, sa.v_proj, kv_rows, g1)
    write(ta.o_proj, sa.o_proj, q_rows)
    read(tm.gate_proj, sm.gate_proj, units, g2)
    read(tm.up_proj, sm.up_proj, units, g2)
    write(tm.down_proj, sm.down_proj, units)
    for t_norm, s_norm in ((t_layer.input_layernorm, s_layer.input_layernorm),
                           (t_layer.post_attention_layernorm, s_layer.post_attention_layernorm)):
        put(s_norm.weight, torch.full_like(s_norm.weight, norm_scale, dtype=torch.float64) if fold
            else project_gain(t_norm.weight, M))


def project_gain(gain: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """diag(Mᵀ·diag(g)·M): a norm gain expressed in the basis M."""
    M = M.to(torch.float64)
    return (M * M * gain.to(torch.float64)[:, None]).sum(0)


def _layer_map(n_teacher: int, n_student: int, layers, default: str) -> list[int]:
    if layers is not None:
        layers = [int(i) for i in layers]
        if len(layers) != n_student or not all(0 <= i < n_teacher for i in layers):
            raise ConfigError(f"layers must list {n_student} teacher block indices in [0, {n_teacher - 1}], "
                              f"got {layers}.")
        return layers
    if default == "first":
        return list(range(n_student))
    return evenly_spaced(n_teacher, n_student).tolist()


@torch.no_grad()
def initialize_student(student, teacher, method: str = "guide", *, center: bool = False, n_blocks: int = 1,
                       rescale_norm: bool = True, final_norm: str = "default", layers=None,
                       teacher_tokenizer=None, student_tokenizer=None) -> dict:
    """Initialise `student` in place from `teacher` with `method`; returns what was done.

    `center`: centre the embedding rows before the PCA (guide). `n_blocks`: how many leading
    blocks guide transfers (the paper: 1). `layers`: teacher block index per student block
    (weight-selection: first blocks by default; layer-copy: evenly spaced by default).
    `final_norm` (guide only): "default" leaves the student's final RMSNorm gain at its own init
    (ones), "teacher" uses the teacher's gain projected through M (times the norm rescale). With
    tied embeddings the projected gain makes the untrained student's logits very peaked on the
    input token (initial loss ~50 nats on SmolLM2), so "default" is the default (reconstructed).
    """
    if final_norm not in ("default", "teacher"):
        raise ConfigError(f"final_norm must be 'default' or 'teacher', got {final_norm!r}.")
    check_compatible(teacher, student, method, teacher_tokenizer=teacher_tokenizer,
                     student_tokenizer=student_tokenizer)
    info: dict = {"method": method}
    if method == "random":
        return info
    t, s = _dims(teacher.config), _dims(student.config)
    info["rope_exact"] = t["head_dim"] % s["head_dim"] == 0
    E_T = teacher.model.embed_tokens.weight
    tied_s = student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    tied_t = teacher.lm_head.weight.data_ptr() == E_T.data_ptr()
    if method == "guide":
        pca = pca_directions(E_T, s["hidden"], center=center)
        M, fold = pca.components, True
        norm_scale = math.sqrt(t["hidden"] / s["hidden"]) if rescale_norm else 1.0
        if not 0 <= n_blocks <= s["layers"]:
            raise ConfigError(f"guide n_blocks must lie in [0, {s['layers']}], got {n_blocks}.")
        pairs = list(zip(range(n_blocks), range(n_blocks)))
        total = float(pca.eigenvalues.sum())
        info.update(center=center, n_blocks=n_blocks, norm_scale=norm_scale,
                    explained_variance=1.0 - pca.discarded / total if total > 0 else 1.0)
    else:
        sel = evenly_spaced(t["hidden"], s["hidden"])
        M = torch.eye(t["hidden"], dtype=torch.float64)[:, sel]
        fold, norm_scale = False, 1.0
        t_layers = _layer_map(t["layers"], s["layers"], layers,
                              "first" if method == "weight-selection" else "spaced")
        pairs = list(zip(t_layers, range(s["layers"])))
    info["blocks"] = {int(si): int(ti) for ti, si in pairs}
    M64 = M.to(torch.float64)
    student.model.embed_tokens.weight.copy_((E_T.to(torch.float64) @ M64).to(student.model.embed_tokens.weight.dtype))
    for ti, si in pairs:
        transfer_block(teacher.model.layers[ti], student.model.layers[si], M, t, s, fold=fold, norm_scale=norm_scale)
    if method != "guide" or final_norm == "teacher":
        g_f = project_gain(teacher.model.norm.weight, M64) * norm_scale
        student.model.norm.weight.copy_(g_f.to(student.model.norm.weight.dtype))
    if not tied_s:  # lm_head reads the final-normed residual stream
        src = teacher.lm_head.weight if not tied_t else E_T
        student.lm_head.weight.copy_((src.to(torch.float64) @ M64).to(student.lm_head.weight.dtype))
    return info


def student_config(teacher_config, *, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                   num_key_value_heads: int | None = None, head_dim: int | None = None,
                   intermediate_size: int | None = None):
    """A config of the teacher's family (same vocabulary, RoPE, norms, activation), smaller."""
    cfg = teacher_config.__class__.from_dict(teacher_config.to_dict())
    cfg.hidden_size, cfg.num_hidden_layers = int(hidden_size), int(num_hidden_layers)
    cfg.num_attention_heads = int(num_attention_heads)
    cfg.num_key_value_heads = int(num_key_value_heads or num_attention_heads)
    cfg.head_dim = int(head_dim or hidden_size // num_attention_heads)
    cfg.intermediate_size = int(intermediate_size or teacher_config.intermediate_size * hidden_size
                                // teacher_config.hidden_size)
    return cfg
