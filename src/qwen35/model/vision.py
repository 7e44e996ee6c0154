"""The Qwen3.5 vision tower: patches of images and video frames -> embeddings the language model reads.

patch embedding (+ learned positions resampled to the frame) -> `depth` pre-norm ViT blocks (2-D rotary,
attention within each frame) -> merger (LayerNorm, each merge x merge group of patches concatenated, MLP).
One call runs every item of a batch together, whatever their sizes: frames of equal length are batched into
one attention call (`ops.vision.FramePlan`), so a batch wastes no rows on padding and needs no dense mask.

Parameter names are the checkpoint's below `model.visual.`; layers keep biases, so they are torch's
`nn.Linear`/`nn.LayerNorm` (the decoder's bias-free `Linear` and its quantised swaps do not apply). The tower
runs in its weights' dtype; rotary and position-table maths are fp32, as in transformers. In bf16 on CPU the
rotary and fc1's bias + tanh GELU are fused C++ kernels (csrc/vision.cpp, `ops.fused.lib_for`); the torch ops
below are the reference and the path everywhere else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, VisionConfig
from ..ops.fused import lib_for
from ..ops.vision import FramePlan, apply_rotary, frame_attention, interpolate_positions, rotary_tables
from .linear import embedding

ACTIVATIONS = {"gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}
LAYER_NORM_EPS = 1e-6


def check_vision_config(cfg: VisionConfig) -> None:
    """ConfigError naming the field when the tower cannot be built from `cfg`."""
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"vision_config.hidden_size={cfg.hidden_size} is not a multiple of "
                          f"num_heads={cfg.num_heads}")
    if (cfg.hidden_size // cfg.num_heads) % 4:
        raise ConfigError(f"vision head dim {cfg.hidden_size // cfg.num_heads} is not a multiple of 4 "
                          "(the 2-D rotary splits it into row and column halves)")
    if math.isqrt(cfg.num_position_embeddings) ** 2 != cfg.num_position_embeddings:
        raise ConfigError(f"vision_config.num_position_embeddings={cfg.num_position_embeddings} is not a square")
    if cfg.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"vision_config.hidden_act={cfg.hidden_act!r} is not supported ({', '.join(ACTIVATIONS)})")


class PatchEmbed(nn.Module):
    """The checkpoint's Conv3d (kernel = stride = temporal_patch x patch x patch) over one patch is a linear map
    of the flattened patch (channel, time, row, column): run as one matmul over all patches."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # rows: q | k | v, each [heads, d]
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], plan: FramePlan) -> torch.Tensor:
        qkv = self.qkv(x).view(x.shape[0], 3, self.num_heads, -1)
        qk, (cos, sin) = qkv[:, :2].transpose(0, 1), rotary
        lib = lib_for(x)
        if lib is None:
            q, k = apply_rotary(qk, cos, sin)  # q and k in one pass, each contiguous
        else:  # the same maths read straight from qkv, no fp32 copies; the tables' halves are equal
            half = cos.shape[-1] // 2
            q, k = lib.vision_rotary(qk, cos[:, :half], sin[:, :half])
        v = qkv[:, 2]
        return self.proj(frame_attention(q, k, v, plan.runs))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.tanh_gelu = cfg.hidden_act == "gelu_pytorch_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = lib_for(x) if self.tanh_gelu and x.dim() == 2 else None
        if lib is None:
            return self.linear_fc2(self.act(self.linear_fc1(x)))
        # fc1 without its bias (the matmul would first copy the bias into its output), then bias + GELU in one
        # pass over fc1's output, in place
        h = lib.bias_gelu_tanh_(F.linear(x, self.linear_fc1.weight), self.linear_fc1.bias)
        return self.linear_fc2(h)


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=LAYER_NORM_EPS)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], plan: FramePlan) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotary, plan)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LayerNorm per patch, then each merge x merge group of adjacent patches as one vector -> MLP (exact GELU)
    -> the language model's width."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        merged = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=LAYER_NORM_EPS)
        self.linear_fc1 = nn.Linear(merged, merged)
        self.linear_fc2 = nn.Linear(merged, cfg.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).view(-1, self.linear_fc1.in_features)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        check_vision_config(cfg)
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.weight.dtype

    @property
    def patch_dim(self) -> int:
        """Values per patch: channels x temporal_patch x patch x patch (1536)."""
        c = self.cfg
        return c.in_channels * c.temporal_patch_size * c.patch_size ** 2

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """pixels: [P, patch_dim], every item's patches concatenated (each frame in merge-block order);
        grids: each item's (t, h, w) in patches. Returns [P / merge^2, out_hidden_size] in the tower's dtype."""
        grids = [(int(t), int(h), int(w)) for t, h, w in grids]  # also a [items, 3] tensor, as transformers takes
        self._check(pixels, grids)
        merge = self.cfg.spatial_merge_size
        plan = FramePlan.build(grids)
        if plan.order is not None:
            pixels = pixels[plan.order.to(pixels.device)]
        x = self.patch_embed(pixels.to(self.dtype))
        x = x + self._positions(plan).to(x.dtype)
        rotary = self._rotary(plan, x.device)
        for block in self.blocks:
            x = block(x, rotary, plan)
        out = self.merger(x)
        order = plan.merged_order(merge)
        if order is None:
            return out
        return torch.empty_like(out).index_copy_(0, order.to(out.device), out)

    def _positions(self, plan: FramePlan) -> torch.Tensor:
        """The learned position table resampled to each frame (once per distinct size), fp32 [P, W]."""
        table, merge = self.pos_embed.weight, self.cfg.spatial_merge_size
        per_size = {hw: interpolate_positions(table, *hw, merge) for hw in dict.fromkeys(plan.frames)}
        return torch.cat([per_size[hw] for hw in plan.frames])

    def _rotary(self, plan: FramePlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        tables = [rotary_tables(h, w, c.spatial_merge_size, c.hidden_size // c.num_heads, c.rope_theta)
                  for h, w in plan.frames]
        cos, sin = (torch.cat(part).to(device) for part in zip(*tables))
        return cos, sin

    def _check(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> None:
        merge = self.cfg.spatial_merge_size
        for t, h, w in grids:
            if min(t, h, w) < 1 or h % merge or w % merge:
                raise ValueError(f"grid (t={t}, h={h}, w={w}): sizes must be positive, h and w multiples of {merge}")
        rows = sum(t * h * w for t, h, w in grids)
        if pixels.dim() != 2 or tuple(pixels.shape) != (rows, self.patch_dim):
            raise ValueError(f"pixels have shape {tuple(pixels.shape)}; the grids need ({rows}, {self.patch_dim})")
