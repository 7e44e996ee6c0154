"""The official Hugging Face layout of Qwen3.5 checkpoints (docs/MODEL.md §7), described once.

The loader (`map_name`), the writer (`checkpoint_tensors`), the FP8 quantiser (`is_quantised`,
`split_fused_experts`) and the parameter count (`config.param_count`) all read this module.

Prefixes: the text decoder is `model.language_model.<x>` in the official (multimodal) layout and `model.<x>`
in the text-only one (`Qwen3_5ForCausalLM.save_pretrained`); `lm_head.weight` (absent when tied);
`model.visual.*` (vision tower) is skipped unless the model is built with its tower (then `visual.*`);
`mtp.*` (MTP head: `mtp.fc`, `mtp.pre_fc_norm_{embedding,hidden}`, `mtp.layers.{j}.*`, `mtp.norm`) is skipped
unless the model is built with its MTP head (then they keep their names).
Routed experts: fused `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and `mlp.experts.down_proj`
[E, H, I], or per expert `mlp.experts.{e}.{gate,up,down}_proj.weight` (FP8 releases, MTP blocks).
Block FP8: `X.weight` is F8_E4M3 and `X.weight_scale_inv` its F32 block scales.
Our model's parameter names are the text-only layout's (`model.layers.{i}.<local>`, `lm_head.weight`,
`mtp.<local>`, `visual.<local>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ModelConfig, TextConfig, VisionConfig

LM = "model.language_model."  # text decoder, official layout
TEXT_ONLY = "model."  # text decoder, text-only layout (and our parameter names)
LM_HEAD = "lm_head.weight"
VISUAL = "model.visual."
MTP = "mtp."
TOWER = "visual."  # our vision tower's parameters: `model.visual.<x>` -> `visual.<x>`
SKIPPED = {VISUAL: "vision tower", MTP: "MTP head"}  # loaded only when the model is built with them
SCALE = "_scale_inv"  # block FP8: X.weight -> X.weight_scale_inv
EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")  # [E, 2I, H], [E, H, I]
F32_ON_DISK = ("linear_attn.A_log", "linear_attn.norm.weight")  # F32 whatever the checkpoint dtype (Qwen3.5)
# Linear layers of a text decoder layer stored as block FP8 in the official FP8 releases (plus routed experts);
# embeddings, lm_head, norms, conv1d, A_log, dt_bias, in_proj_a/b, the router, shared_expert_gate, the vision
# tower and the MTP head stay unquantised.
QUANTISED = frozenset({
    "linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj",
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj",
})

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


# -- reading names --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Name:
    """A checkpoint tensor name taken apart: `<prefix>[layers.<layer>.]<local>[_scale_inv]`."""

    component: str  # "text" | "lm_head" | "visual" | "mtp"
    prefix: str  # LM, TEXT_ONLY, VISUAL, MTP or "" (lm_head)
    layer: int | None  # decoder layer (text or MTP block), None outside layers
    local: str  # the name inside the layer (or the component), without the FP8 scale suffix
    scale: bool = False  # a block-FP8 `weight_scale_inv`
    expert: int | None = None  # per-expert tensors: mlp.experts.{expert}.{proj}.weight
    proj: str = ""

    @property
    def inner(self) -> str:
        """The name without its component prefix and scale suffix, e.g. `layers.3.self_attn.q_proj.weight`."""
        return self.local if self.layer is None else f"layers.{self.layer}.{self.local}"


def parse(key: str) -> Name | None:
    """Take checkpoint tensor `key` apart, or None when it is not a Qwen3.5 checkpoint name."""
    if key in (LM_HEAD, LM_HEAD + SCALE):
        return Name("lm_head", "", None, LM_HEAD, key != LM_HEAD)
    for prefix, component in ((LM, "text"), (VISUAL, "visual"), (MTP, "mtp"), (TEXT_ONLY, "text")):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            break
    else:
        return None
    scale = rest.endswith(".weight" + SCALE)
    if scale:
        rest = rest[: -len(SCALE)]
    layer = None
    m = _LAYER.match(rest)
    if m and component != "visual":
        layer, rest = int(m.group(1)), m.group(2)
    e = _EXPERT.match(rest) if layer is not None else None
    if e:
        return Name(component, prefix, layer, rest, scale, int(e.group(1)), e.group(2))
    return Name(component, prefix, layer, rest, scale)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a checkpoint tensor goes in our model."""

    kind: str  # "param" | "expert" | "scale" | "expert_scale" | "skip"
    name: str  # parameter name; the stacked experts module for experts; the component for skips
    expert: int = -1
    proj: str = ""  # gate_proj | up_proj | down_proj, for per-expert tensors


def map_name(key: str, mtp: bool = False, vision: bool = False) -> Target | None:
    """The target of checkpoint tensor `key`, or None when it is not a Qwen3.5 checkpoint name.
    `mtp`: the model has its MTP head, whose parameters keep the checkpoint's `mtp.*` names.
    `vision`: the model has its vision tower, whose parameters are `visual.<name below model.visual.>`."""
    n = parse(key)
    if n is None:
        return None
    if (n.component == "visual" and not vision) or (n.component == "mtp" and not mtp):
        return Target("skip", SKIPPED[n.prefix])
    prefix = {"mtp": MTP, "visual": TOWER, "text": TEXT_ONLY}.get(n.component, "")
    param = prefix + n.inner
    if n.expert is not None:
        stacked = param.rsplit(".", 3)[0]  # model.layers.{i}.mlp.experts
        return Target("expert_scale" if n.scale else "expert", stacked, n.expert, n.proj)
    return Target("scale" if n.scale else "param", param)


def is_quantised(key: str) -> bool:
    """Whether checkpoint tensor `key` is stored as block FP8 in an official FP8 release."""
    n = parse(key)
    if n is None or n.component != "text" or n.layer is None or n.scale:
        return False
    return n.expert is not None or (n.local.endswith(".weight") and n.local[: -len(".weight")] in QUANTISED)


def split_fused_experts(key: str, tensor) -> dict[str, object] | None:
    """Fused experts of a text layer as per-expert [out, in] tensors (the FP8 releases' layout), else None."""
    n = parse(key)
    if n is None or n.component != "text" or n.layer is None or n.local not in FUSED_EXPERTS or tensor.dim() != 3:
        return None
    stem = f"{n.prefix}layers.{n.layer}.mlp.experts"
    if n.local == FUSED_EXPERTS[0]:  # [E, 2I, H], gate rows first
        inter = tensor.shape[1] // 2
        parts = (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter)))
    else:  # [E, H, I]
        parts = (("down_proj", slice(None)),)
    return {f"{stem}.{e}.{proj}.weight": tensor[e, rows] for e in range(tensor.shape[0]) for proj, rows in parts}


# -- the tensors of a checkpoint ---------------------------------------------------------------------

Shape = tuple[int, ...]


def layer_tensors(cfg: TextConfig, full_attention: bool, fused_experts: bool = True) -> list[tuple[str, Shape]]:
    """(local name, shape) of every tensor of one decoder layer (§6.2-6.5)."""
    h = cfg.hidden_size
    out: list[tuple[str, Shape]] = [("input_layernorm.weight", (h,)), ("post_attention_layernorm.weight", (h,))]
    if full_attention:
        d, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        out += [("self_attn.q_proj.weight", (2 * nq * d, h)),  # per head: query rows, then gate rows
                ("self_attn.k_proj.weight", (nkv * d, h)), ("self_attn.v_proj.weight", (nkv * d, h)),
                ("self_attn.o_proj.weight", (h, nq * d)),
                ("self_attn.q_norm.weight", (d,)), ("self_attn.k_norm.weight", (d,))]
    else:
        hv, conv = cfg.linear_num_value_heads, cfg.linear_conv_dim
        out += [("linear_attn.in_proj_qkv.weight", (conv, h)),  # rows q | k | v
                ("linear_attn.in_proj_z.weight", (cfg.linear_value_dim, h)),
                ("linear_attn.in_proj_b.weight", (hv, h)), ("linear_attn.in_proj_a.weight", (hv, h)),
                ("linear_attn.conv1d.weight", (conv, 1, cfg.linear_conv_kernel_dim)),
                ("linear_attn.dt_bias", (hv,)), ("linear_attn.A_log", (hv,)),
                ("linear_attn.norm.weight", (cfg.linear_value_head_dim,)),
                ("linear_attn.out_proj.weight", (h, cfg.linear_value_dim))]
    if cfg.is_moe:
        E, inter, shared = cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
        out.append(("mlp.gate.weight", (E, h)))
        if fused_experts:
            out += [(FUSED_EXPERTS[0], (E, 2 * inter, h)), (FUSED_EXPERTS[1], (E, h, inter))]
        else:
            for e in range(E):
                out += [(f"mlp.experts.{e}.gate_proj.weight", (inter, h)),
                        (f"mlp.experts.{e}.up_proj.weight", (inter, h)),
                        (f"mlp.experts.{e}.down_proj.weight", (h, inter))]
        out += [("mlp.shared_expert.gate_proj.weight", (shared, h)), ("mlp.shared_expert.up_proj.weight", (shared, h)),
                ("mlp.shared_expert.down_proj.weight", (h, shared)), ("mlp.shared_expert_gate.weight", (1, h))]
    else:
        i = cfg.intermediate_size
        out += [("mlp.gate_proj.weight", (i, h)), ("mlp.up_proj.weight", (i, h)), ("mlp.down_proj.weight", (h, i))]
    return out


def text_tensors(cfg: TextConfig, prefix: str = LM) -> list[tuple[str, Shape]]:
    """The text decoder and lm_head (§6.8): what our model loads."""
    h = cfg.hidden_size
    out: list[tuple[str, Shape]] = [(prefix + "embed_tokens.weight", (cfg.vocab_size, h))]
    for i, kind in enumerate(cfg.layer_types):
        out += [(f"{prefix}layers.{i}.{local}", shape) for local, shape in layer_tensors(cfg, kind == "full_attention")]
    out.append((prefix + "norm.weight", (h,)))
    if not cfg.tie_word_embeddings:
        out.append((LM_HEAD, (cfg.vocab_size, h)))
    return out


def mtp_tensors(cfg: TextConfig) -> list[tuple[str, Shape]]:
    """The MTP head (§6.6): full-attention blocks with per-expert MoE, fc over [embedding; hidden], norms."""
    h = cfg.hidden_size
    out: list[tuple[str, Shape]] = []
    for j in range(cfg.mtp_num_hidden_layers):
        out += [(f"{MTP}layers.{j}.{local}", shape) for local, shape in layer_tensors(cfg, True, fused_experts=False)]
    if cfg.mtp_num_hidden_layers:
        out += [(MTP + "fc.weight", (h, 2 * h)), (MTP + "pre_fc_norm_embedding.weight", (h,)),
                (MTP + "pre_fc_norm_hidden.weight", (h,)), (MTP + "norm.weight", (h,))]
    return out


def vision_tensors(v: VisionConfig) -> list[tuple[str, Shape]]:
    """The vision tower (§6.7)."""
    p, w, inter = VISUAL, v.hidden_size, v.intermediate_size
    merged = w * v.spatial_merge_size ** 2
    out: list[tuple[str, Shape]] = [
        (p + "patch_embed.proj.weight", (w, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)),
        (p + "patch_embed.proj.bias", (w,)), (p + "pos_embed.weight", (v.num_position_embeddings, w))]
    for j in range(v.depth):
        b = f"{p}blocks.{j}."
        out += [(b + "norm1.weight", (w,)), (b + "norm1.bias", (w,)), (b + "norm2.weight", (w,)),
                (b + "norm2.bias", (w,)), (b + "attn.qkv.weight", (3 * w, w)), (b + "attn.qkv.bias", (3 * w,)),
                (b + "attn.proj.weight", (w, w)), (b + "attn.proj.bias", (w,)),
                (b + "mlp.linear_fc1.weight", (inter, w)), (b + "mlp.linear_fc1.bias", (inter,)),
                (b + "mlp.linear_fc2.weight", (w, inter)), (b + "mlp.linear_fc2.bias", (w,))]
    out += [(p + "merger.norm.weight", (w,)), (p + "merger.norm.bias", (w,)),
            (p + "merger.linear_fc1.weight", (merged, merged)), (p + "merger.linear_fc1.bias", (merged,)),
            (p + "merger.linear_fc2.weight", (v.out_hidden_size, merged)),
            (p + "merger.linear_fc2.bias", (v.out_hidden_size,))]
    return out


def checkpoint_tensors(cfg: ModelConfig) -> list[tuple[str, Shape]]:
    """Every tensor of an official (BF16) checkpoint of this shape, in the order the writer emits them."""
    out = text_tensors(cfg.text)
    if cfg.vision is not None:
        out += vision_tensors(cfg.vision)
    return out + mtp_tensors(cfg.text)


def is_f32_on_disk(key: str) -> bool:
    n = parse(key)
    return n is not None and n.layer is not None and n.local in F32_ON_DISK
