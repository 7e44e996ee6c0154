"""Command-line changes to a checkpoint's config.json (`--hf-overrides`, `--rope-scaling`, `--rope-theta`),
the context length the result supports, and a way to hand the changed config to the loader.

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
- the supported length is `max_position_embeddings`, or with YaRN `factor * original_max_position_embeddings`
  (the original defaulting to `max_position_embeddings`, as in transformers and vLLM).

The loader reads `<dir>/config.json`. When the config changes, or the requested length needs the YaRN range,
`overlay_checkpoint` builds a directory of symlinks to the checkpoint's files with the changed config.json,
so the engine loads it unchanged. With YaRN its `max_position_embeddings` is raised to the supported length
(and `original_max_position_embeddings` written out), because the engine caps `max_model_len` at
`max_position_embeddings`.
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import tempfile
from pathlib import Path
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


def supported_length(text: TextConfig) -> int:
    """Tokens the model supports: max_position_embeddings, or with YaRN factor x original length."""
    rope = text.rope
    if rope.rope_type == "yarn" and rope.factor > 1:
        return int(rope.factor * (rope.original_max_position_embeddings or text.max_position_embeddings))
    return text.max_position_embeddings


def describe_supported(text: TextConfig) -> str:
    rope = text.rope
    if rope.rope_type == "yarn" and rope.factor > 1:
        return (f"YaRN factor {rope.factor:g} x original_max_position_embeddings "
                f"{rope.original_max_position_embeddings or text.max_position_embeddings}")
    return f"max_position_embeddings={text.max_position_embeddings}"


def with_yarn_length(config: dict[str, Any], text: TextConfig) -> dict[str, Any]:
    """config.json whose max_position_embeddings covers the YaRN range (see the module docstring)."""
    d = copy.deepcopy(config)
    t = text_section(d)
    rope = dict(t.get("rope_parameters") or {})
    rope.setdefault("original_max_position_embeddings", text.max_position_embeddings)
    t["rope_parameters"] = rope
    t["max_position_embeddings"] = supported_length(text)
    return d


def parse_config(config: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(config)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def overlay_checkpoint(src: Path, config: dict[str, Any]) -> Path:
    """A temporary directory that is `src` with `config` as its config.json (symlinks to the other files).
    Removed when the process exits."""
    src = Path(src).resolve()
    out = Path(tempfile.mkdtemp(prefix=f"qwen35-{src.name}-overrides-"))
    atexit.register(shutil.rmtree, out, True)
    for entry in src.iterdir():
        if entry.name != "config.json":
            (out / entry.name).symlink_to(entry)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
