"""Checkpoint tensor names -> model parameter names (architecture.md §6), as declared data.

Accepted layouts:
- official multimodal: `model.language_model.<x>`, `lm_head.weight`, `model.visual.*`, `mtp.*`;
- text-only (`Qwen3_5ForCausalLM.save_pretrained`): `model.<x>`, `lm_head.weight`;
- routed experts fused (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]) or
  per expert (`mlp.experts.{e}.{gate,up,down}_proj.weight`), optionally block-FP8 (`.weight_scale_inv`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEXT_PREFIXES = ("model.language_model.", "model.")
SKIPPED_PREFIXES = {"model.visual.": "vision tower", "mtp.": "MTP head"}
_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|weight_scale_inv)$")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a checkpoint tensor goes."""

    kind: str  # "param" | "expert" | "scale" | "expert_scale" | "skip"
    name: str  # parameter name (or the skipped component)
    expert: int = -1
    proj: str = ""  # gate_proj | up_proj | down_proj, for per-expert tensors


def map_name(key: str) -> Target | None:
    """The target of checkpoint tensor `key`, or None when it is not a Qwen3.5 text tensor."""
    for prefix, what in SKIPPED_PREFIXES.items():
        if key.startswith(prefix):
            return Target("skip", what)
    if key == "lm_head.weight":
        return Target("param", key)
    for prefix in TEXT_PREFIXES:
        if key.startswith(prefix):
            name = "model." + key[len(prefix):]
            break
    else:
        return None
    m = _EXPERT.match(name)
    if m:
        kind = "expert" if m.group(4) == "weight" else "expert_scale"
        return Target(kind, m.group(1), int(m.group(2)), m.group(3))
    if name.endswith(".weight_scale_inv"):
        return Target("scale", name[: -len("_scale_inv")])
    return Target("param", name)
