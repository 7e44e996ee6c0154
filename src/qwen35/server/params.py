"""Request body -> `SamplingParams`, with the model's defaults filled in.

Order per field: the request's value; for a chat's temperature / top_p / top_k / min_p the model card's preset
for its thinking mode (thinking 0.6 / 0.95 / 20 / 0, non-thinking 0.7 / 0.8 / 20 / 0), unless the generation
config turns sampling off (`do_sample: false`: greedy, as the demo model asks); then the generation config; then
neutral values. The generation config is the checkpoint's generation_config.json (`--generation-config auto`).
A configuration the user gives (`--generation-config DIR`, `--override-generation-config`) is used as vLLM uses
it, with no presets (the server sets `use_presets` False); `--generation-config vllm`: neutral values only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..engine.sampling_params import SamplingParams

log = logging.getLogger("qwen35.server")

THINKING_PRESET = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
NON_THINKING_PRESET = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
_FROM_GENERATION_CONFIG = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                           "frequency_penalty")
# what --override-generation-config may set, and the JSON type each takes
_OVERRIDABLE: dict[str, type | tuple[type, ...]] = {**{k: (int, float) for k in _FROM_GENERATION_CONFIG},
                                                    "max_new_tokens": int, "do_sample": bool}


def load_generation_defaults(model_dir: str | Path, mode: str = "auto",
                             override: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sampling defaults from the checkpoint's generation_config.json (mode "auto"), the one in the folder
    `mode`, or none (mode "vllm"); `override` (vLLM's `--override-generation-config`) on top. ValueError for a
    folder without a readable generation_config.json: a mistyped path must not pass unnoticed."""
    data: dict[str, Any] = {}
    if mode == "auto":
        path = Path(model_dir) / "generation_config.json"
        if path.exists():
            try:
                data = _read(path)
            except ValueError as e:
                log.warning("ignoring %s", e)
    elif mode != "vllm":
        data = _read(Path(mode) / "generation_config.json")
    out = _values(data)
    for key, value in (override or {}).items():
        if key not in _OVERRIDABLE:
            raise ValueError(f"--override-generation-config: {key!r} is not a sampling default (these are: "
                             f"{', '.join(_OVERRIDABLE)})")
        if not isinstance(value, _OVERRIDABLE[key]) or (_OVERRIDABLE[key] is not bool and isinstance(value, bool)):
            raise ValueError(f"--override-generation-config: {key!r} has the wrong type")
    out.update(_values(override or {}))
    return out


def _values(data: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults a generation config holds (`do_sample: false` is temperature 0)."""
    out = {k: data[k] for k in _FROM_GENERATION_CONFIG
           if isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)}
    if data.get("do_sample") is False:
        out["temperature"] = 0.0
    if isinstance(data.get("max_new_tokens"), int) and not isinstance(data.get("max_new_tokens"), bool):
        out["max_tokens"] = data["max_new_tokens"]
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def sampling_params(body: Any, *, max_tokens: int | None, thinking: bool | None, defaults: dict[str, Any],
                    use_presets: bool, logprobs: int | None, guided: Any = None,
                    prompt_logprobs: int | None = None, vocab_size: int | None = None) -> SamplingParams:
    greedy_model = defaults.get("temperature") == 0.0  # its generation_config turns sampling off (the demo model)
    preset = {} if not use_presets or thinking is None or greedy_model else \
        (THINKING_PRESET if thinking else NON_THINKING_PRESET)
    values: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):
        given = getattr(body, name, None)
        if given is not None:
            values[name] = given
        elif name in preset:
            values[name] = preset[name]
        elif name in defaults:
            values[name] = defaults[name]
    cap = defaults.get("max_tokens")
    if max_tokens is None and cap is not None:
        max_tokens = cap
    stop = body.stop if isinstance(body.stop, list) else ([body.stop] if body.stop else [])
    kwargs = dict(values, n=body.n, seed=body.seed, max_tokens=max_tokens, min_tokens=body.min_tokens,
                  stop=stop, stop_token_ids=body.stop_token_ids or [], ignore_eos=body.ignore_eos,
                  logprobs=logprobs, skip_special_tokens=body.skip_special_tokens,
                  include_stop_str_in_output=body.include_stop_str_in_output,
                  allowed_token_ids=getattr(body, "allowed_token_ids", None),
                  bad_words=getattr(body, "bad_words", None), cache_salt=getattr(body, "cache_salt", None))
    if guided is not None:
        kwargs["guided"] = guided
    if prompt_logprobs is not None:
        kwargs["prompt_logprobs"] = prompt_logprobs
    if body.logit_bias:
        try:
            kwargs["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
        except ValueError:
            raise ValueError("logit_bias keys must be token ids") from None
    params = SamplingParams(**kwargs)
    if vocab_size is not None:
        params.check_vocab(vocab_size)
    return params
