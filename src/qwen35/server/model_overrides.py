"""Command-line changes to a checkpoint's config.json (`--hf-overrides`, `--rope-scaling`, `--rope-theta`).

The changed config reaches the loader as `EngineConfig.hf_config`; the checkpoint's files are not touched.

The model cards reach about 1,010,000 tokens with static YaRN, set from the command line:

    qwen35 serve DIR --max-model-len 1010000 --hf-overrides '{"text_config": {"rope_parameters": {
        "mrope_interleaved": true, "mrope_section": [11, 11, 10], "rope_type": "yarn", "rope_theta": 10000000,
        "partial_rotary_factor": 0.25, "factor": 4.0, "original_max_position_embeddings": 262144}}}'

Rules:
- overrides are deep-merged into config.json (objects merge key by key, anything else replaces);
- on the multimodal layout (`text_config`), the text keys `rope_parameters`, `rope_scaling` and
  `max_position_embeddings` given at the top level go into `text_config`, where the text model reads them;
- `rope_scaling` (the older name, also `--rope-scaling`) merges into `rope_parameters`, and `type` means
  `rope_type`;
- the supported length is `TextConfig.supported_length`: `max_position_embeddings`, or with YaRN
  `factor * original_max_position_embeddings` (the original defaulting to `max_position_embeddings`, as in
  transformers and vLLM).
"""

from __future__ import annotations

import copy
from typing import Any

from ..config import ConfigError, ModelConfig, TextConfig

TEXT_KEYS = ("rope_parameters", "rope_scaling", "max_position_embeddings")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _rope_from_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    d = dict(scaling)
    if "type" in d and "rope_type" not in d:
        d["rope_type"] = d.pop("type")
    return d


def text_section(d: dict[str, Any]) -> dict[str, Any]:
    """The dict the text model reads (ModelConfig.from_dict's rule)."""
    t = d.get("text_config")
    return t if isinstance(t, dict) else d


def apply_overrides(config: dict[str, Any], hf_overrides: dict[str, Any] | None = None,
                    rope_scaling: dict[str, Any] | None = None, rope_theta: float | None = None) -> dict[str, Any]:
    """config.json with the command-line overrides applied (a new dict; `config` is not changed)."""
    d = copy.deepcopy(config)
    over = copy.deepcopy(hf_overrides or {})
    if isinstance(d.get("text_config"), dict):
        moved = {k: over.pop(k) for k in TEXT_KEYS if k in over}
        if moved:
            over["text_config"] = deep_merge(over.get("text_config") or {}, moved)
        over_text = over.get("text_config")
    else:
        over_text = over
    scaling = over_text.pop("rope_scaling", None) if isinstance(over_text, dict) else None
    d = deep_merge(d, over)
    text = text_section(d)
    for extra in (scaling, rope_scaling):
        if extra is None:
            continue
        if not isinstance(extra, dict):
            raise ConfigError(f"rope_scaling must be a JSON object, got {extra!r}")
        # the old name updates the parameters the model reads
        text["rope_parameters"] = deep_merge(text.get("rope_parameters") or {}, _rope_from_scaling(extra))
    if rope_theta is not None:
        text["rope_parameters"] = deep_merge(text.get("rope_parameters") or {}, {"rope_theta": rope_theta})
    return d


def describe_supported(text: TextConfig) -> str:
    rope = text.rope
    if rope.rope_type == "yarn" and rope.factor > 1:
        return (f"YaRN factor {rope.factor:g} x original_max_position_embeddings "
                f"{rope.original_max_position_embeddings or text.max_position_embeddings}")
    return f"max_position_embeddings={text.max_position_embeddings}"


def parse_config(config: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(config)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
