"""Model configuration: frozen dataclasses built from a Hugging Face `config.json`.

Two layouts are accepted, as on the Hub:
- the multimodal wrapper (`model_type` qwen3_5 / qwen3_5_moe) with `text_config` and `vision_config`;
- a bare text config (`model_type` qwen3_5_text / qwen3_5_moe_text), as written by `Qwen3_5ForCausalLM`.

Unknown keys are ignored; impossible values raise `ConfigError` naming the field.
Derived values (`layer_types`, rotary dim, GDN widths) are computed once in `from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DENSE_TYPES = ("qwen3_5", "qwen3_5_text")
MOE_TYPES = ("qwen3_5_moe", "qwen3_5_moe_text")
LAYER_KINDS = ("linear_attention", "full_attention")
DEFAULT_MAX_POSITION = 262_144  # TextConfig.max_position_embeddings when config.json has none
VISION_ROPE_THETA = 10_000.0  # VisionConfig.rope_theta when config.json has none
# The text config keys that set tensor shapes (plus intermediate_size for dense models): never defaulted
REQUIRED_TEXT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads")


class ConfigError(ValueError):
    """A config.json that cannot describe a Qwen3.5 model."""


@dataclass(frozen=True, slots=True)
class RopeConfig:
    theta: float = 10_000_000.0
    partial_rotary_factor: float = 0.25
    rope_type: str = "default"  # "default" | "yarn"
    factor: float = 1.0  # YaRN scale
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # YaRN cos/sin scale; default 0.1 ln(factor) + 1 (or the mscale ratio)
    mscale: float | None = None  # DeepSeek-style: attention scale get_mscale(f, mscale) / get_mscale(f, all_dim)
    mscale_all_dim: float | None = None
    truncate: bool = True  # floor/ceil the YaRN correction range
    mrope_section: tuple[int, ...] = (11, 11, 10)
    mrope_interleaved: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, partial_rotary_factor: float | None,
                  max_position_embeddings: int | None = None) -> "RopeConfig":
        """`rope_parameters` as transformers reads them. A YaRN `factor` that is missing or null is
        max_position_embeddings / original_max_position_embeddings (transformers' rule; 1 when either is
        unknown); null or 0 betas mean the defaults 32 and 1, as there."""
        d = dict(d or {})
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type not in ("default", "yarn"):
            raise ConfigError(f"rope_parameters.rope_type={rope_type!r} is not supported (default or yarn)")
        prf = d.get("partial_rotary_factor", partial_rotary_factor if partial_rotary_factor is not None else 0.25)
        original = d.get("original_max_position_embeddings")
        factor = d.get("factor")
        if factor is None:
            factor = (max_position_embeddings / (original or max_position_embeddings)
                      if rope_type == "yarn" and max_position_embeddings else 1.0)

        def optional(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        return cls(
            theta=float(d.get("rope_theta", 10_000_000.0)),
            partial_rotary_factor=float(prf),
            rope_type=rope_type,
            factor=float(factor),
            original_max_position_embeddings=original,
            beta_fast=float(d.get("beta_fast") or 32.0),
            beta_slow=float(d.get("beta_slow") or 1.0),
            attention_factor=optional("attention_factor"),
            mscale=optional("mscale"),
            mscale_all_dim=optional("mscale_all_dim"),
            truncate=bool(d.get("truncate", True)),
            mrope_section=tuple(d.get("mrope_section", (11, 11, 10))),
            mrope_interleaved=bool(d.get("mrope_interleaved", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mrope_interleaved": self.mrope_interleaved,
            "mrope_section": list(self.mrope_section),
            "rope_type": self.rope_type,
            "rope_theta": self.theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        if self.rope_type == "yarn":
            d["factor"] = self.factor
            if self.original_max_position_embeddings is not None:
                d["original_max_position_embeddings"] = self.original_max_position_embeddings
            defaults = RopeConfig()
            for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"):
                if getattr(self, key) != getattr(defaults, key):
                    d[key] = getattr(self, key)
        return d


@dataclass(frozen=True, slots=True)
class TextConfig:
    """Everything the text decoder reads. Field names follow `text_config` in config.json."""

    vocab_size: int = 248_320
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    layer_types: tuple[str, ...] = ()
    # gated attention
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 256
    # gated deltanet
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 16
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    # feed-forward: dense (intermediate_size) or MoE (num_experts > 0)
    intermediate_size: int = 3584
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    # misc
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = DEFAULT_MAX_POSITION
    tie_word_embeddings: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    mtp_num_hidden_layers: int = 0
    eos_token_id: int | None = 248_044
    hidden_act: str = "silu"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope.partial_rotary_factor)

    @property
    def supported_length(self) -> int:
        """Tokens the model supports: max_position_embeddings, or with YaRN factor x the original length
        (`original_max_position_embeddings`, defaulting to max_position_embeddings as in transformers)."""
        rope = self.rope
        if rope.rope_type == "yarn" and rope.factor > 1:
            return int(rope.factor * (rope.original_max_position_embeddings or self.max_position_embeddings))
        return self.max_position_embeddings

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:
        return 2 * self.linear_key_dim + self.linear_value_dim

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == "full_attention")

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == "linear_attention")

    def __post_init__(self) -> None:
        positive = [
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
            "linear_value_head_dim", "linear_conv_kernel_dim", "max_position_embeddings",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}"
            )
        bad = sorted(set(self.layer_types) - set(LAYER_KINDS))
        if bad:
            raise ConfigError(f"layer_types contains unknown kinds {bad}; expected {LAYER_KINDS}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(
                f"linear_num_value_heads={self.linear_num_value_heads} is not a multiple of "
                f"linear_num_key_heads={self.linear_num_key_heads}"
            )
        rd = self.rotary_dim
        if rd <= 0 or rd > self.head_dim or rd % 2:
            raise ConfigError(
                f"partial_rotary_factor={self.rope.partial_rotary_factor} gives rotary dim {rd} "
                f"for head_dim {self.head_dim}; it must be even and in (0, head_dim]"
            )
        if self.rope.theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope.theta}")
        if self.rope.rope_type == "yarn" and self.rope.factor < 1:
            raise ConfigError(f"yarn factor must be >= 1, got {self.rope.factor}")
        if not (0 < self.rms_norm_eps < 1):
            raise ConfigError(f"rms_norm_eps must be in (0, 1), got {self.rms_norm_eps}")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act={self.hidden_act!r} is not supported (Qwen3.5 uses silu)")
        if self.is_moe:
            if not (0 < self.num_experts_per_tok <= self.num_experts):
                raise ConfigError(
                    f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]"
                )
            if self.moe_intermediate_size <= 0:
                raise ConfigError(f"moe_intermediate_size must be positive, got {self.moe_intermediate_size}")
            if self.shared_expert_intermediate_size < 0:
                raise ConfigError("shared_expert_intermediate_size must be >= 0")
        elif self.intermediate_size <= 0:
            raise ConfigError(f"intermediate_size must be positive, got {self.intermediate_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, moe: bool, tie_word_embeddings: bool | None = None) -> "TextConfig":
        missing = [k for k in REQUIRED_TEXT_KEYS + (() if moe else ("intermediate_size",)) if k not in d]
        if missing:  # the tensors' shapes: a default would only move the error to a tensor of the wrong shape
            raise ConfigError(f"the text config has no {', '.join(missing)} (every Qwen3.5 config.json gives them, "
                              "under text_config for the multimodal layout)")
        n_layers = d["num_hidden_layers"]
        layer_types = d.get("layer_types")
        if layer_types is None:
            interval = d.get("full_attention_interval", 4)
            if not isinstance(interval, int) or interval <= 0:
                raise ConfigError(f"full_attention_interval must be a positive integer, got {interval!r}")
            layer_types = [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)
            ]
        eos = d.get("eos_token_id", 248_044)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        tie = d.get("tie_word_embeddings", tie_word_embeddings if tie_word_embeddings is not None else False)
        names = {f.name for f in dataclasses.fields(cls)} - {"layer_types", "rope", "eos_token_id",
                                                              "tie_word_embeddings"}
        kwargs = {k: d[k] for k in names if k in d}
        if not moe:
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"):
                kwargs.pop(k, None)
        elif "num_experts" not in d:
            raise ConfigError("MoE config (qwen3_5_moe) has no num_experts")
        else:
            kwargs["intermediate_size"] = 0  # MoE models have no dense MLP
        if "rope_scaling" in d and "rope_parameters" not in d:
            d = {**d, "rope_parameters": d["rope_scaling"]}
        rope = RopeConfig.from_dict(d.get("rope_parameters"), d.get("partial_rotary_factor"),
                                    d.get("max_position_embeddings", DEFAULT_MAX_POSITION))
        return cls(layer_types=tuple(layer_types), rope=rope, eos_token_id=eos,
                   tie_word_embeddings=bool(tie), **kwargs)

    def to_dict(self, moe_type: bool) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layer_types"] = list(self.layer_types)
        d["rope_parameters"] = self.rope.to_dict()
        del d["rope"]
        d["model_type"] = "qwen3_5_moe_text" if moe_type else "qwen3_5_text"
        d["full_attention_interval"] = _interval_of(self.layer_types)
        d["partial_rotary_factor"] = self.rope.partial_rotary_factor
        d["attn_output_gate"] = True
        d["attention_bias"] = False
        d["mamba_ssm_dtype"] = "float32"
        d["dtype"] = "bfloat16"
        if moe_type:
            del d["intermediate_size"]
        else:
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                      "shared_expert_intermediate_size", "norm_topk_prob"):
                del d[k]
        return d


def _interval_of(layer_types: tuple[str, ...]) -> int:
    for i, t in enumerate(layer_types):
        if t == "full_attention":
            return i + 1
    return len(layer_types) + 1


@dataclass(frozen=True, slots=True)
class VisionConfig:
    depth: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    out_hidden_size: int = 1024
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = VISION_ROPE_THETA  # the 2-D rotary's base: `rope_parameters.rope_theta` (type "axial")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta"}
        kwargs = {k: d[k] for k in names if k in d}
        theta = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta"))
        if theta is not None:
            kwargs["rope_theta"] = float(theta)
        return cls(**kwargs)

    def to_dict(self, moe_type: bool) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        theta = d.pop("rope_theta")
        if theta != VISION_ROPE_THETA:
            d["rope_parameters"] = {"rope_type": "axial", "rope_theta": theta}
        d["model_type"] = "qwen3_5_moe_vision" if moe_type else "qwen3_5_vision"
        d["deepstack_visual_indexes"] = []
        d["initializer_range"] = 0.02
        return d


# `--quantization` / `LLM(quantization=...)`: int8 / int4 quantise a bf16 (or FP8) checkpoint at load;
# fp8 / gptq / awq name a checkpoint that already is one (checked). vLLM's kernel-specific names are aliases.
QUANTIZATION_CHOICES = ("int8", "int4", "fp8", "gptq", "awq")
QUANTIZATION_ALIASES = {"gptq_marlin": "gptq", "awq_marlin": "awq"}
CHECKPOINT_METHODS = ("fp8", "gptq", "awq")  # quantised on disk: accepted as a check of the checkpoint


def check_quantization(value: str | None) -> str | None:
    """The canonical name of a `quantization` value (None stays None); ValueError naming the choices."""
    if value is None:
        return None
    q = str(value).lower()
    q = QUANTIZATION_ALIASES.get(q, q)
    if q not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)} (or unset), "
                         f"got {value!r}")
    return q


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """The checkpoint's `quantization_config`: fine-grained block FP8 (`quant_method: fp8`,
    `weight_block_size`), or 4-bit GPTQ / AWQ (`bits`, `group_size`, `sym`, `desc_act`; loading/gptq.py)."""

    method: str = "fp8"
    weight_block_size: tuple[int, int] = (128, 128)
    modules_to_not_convert: tuple[str, ...] = ()
    bits: int = 4  # gptq / awq
    group_size: int = 128  # gptq / awq; -1: one group per row
    sym: bool = True
    desc_act: bool = False
    checkpoint_format: str = "gptq"  # gptq: "gptq" (v1, zeros stored minus one) or "gptq_v2"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        method = d.get("quant_method")
        skip = d.get("modules_to_not_convert") or d.get("ignored_layers") or ()
        if method in ("gptq", "awq"):
            return cls._int4(method, d, tuple(skip))
        if method != "fp8":
            raise ConfigError(f"quantization_config.quant_method={method!r} is not supported (supported: fp8 "
                              "block FP8, gptq and awq 4-bit)")
        block = d.get("weight_block_size")
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0
                                                                              for b in block)):
            raise ConfigError(f"quantization_config.weight_block_size must be two positive ints, got {block!r}")
        return cls(method=method, weight_block_size=(block[0], block[1]), modules_to_not_convert=tuple(skip))

    @classmethod
    def _int4(cls, method: str, d: dict[str, Any], skip: tuple[str, ...]) -> "QuantConfig":
        bits = d.get("bits", d.get("w_bit"))
        if bits != 4:
            raise ConfigError(f"quantization_config.bits={bits!r}: only 4-bit {method} checkpoints are supported")
        group = d.get("group_size", d.get("q_group_size", 128))
        if not isinstance(group, int) or isinstance(group, bool) or not (group == -1 or group > 0):
            raise ConfigError(f"quantization_config.group_size must be a positive int or -1, got {group!r}")
        fmt = str(d.get("checkpoint_format") or "gptq")
        if method == "gptq" and fmt not in ("gptq", "gptq_v2"):
            raise ConfigError(f"quantization_config.checkpoint_format={fmt!r} is not supported (gptq, gptq_v2)")
        version = str(d.get("version", "gemm")).lower()
        if method == "awq" and version != "gemm":
            raise ConfigError(f"quantization_config.version={version!r}: only AWQ's GEMM layout is supported")
        sym = bool(d.get("sym", not d.get("zero_point", method == "awq")))
        return cls(method=method, modules_to_not_convert=skip, bits=4, group_size=group, sym=sym,
                   desc_act=bool(d.get("desc_act", False)), checkpoint_format=fmt)

    def to_dict(self) -> dict[str, Any]:
        if self.method in ("gptq", "awq"):
            d: dict[str, Any] = {"quant_method": self.method, "bits": self.bits, "group_size": self.group_size}
            if self.method == "gptq":
                d.update(sym=self.sym, desc_act=self.desc_act, checkpoint_format=self.checkpoint_format)
            else:
                d.update(zero_point=not self.sym, version="gemm")
            if self.modules_to_not_convert:
                d["modules_to_not_convert"] = list(self.modules_to_not_convert)
            return d
        return {"quant_method": self.method, "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": list(self.weight_block_size),
                "modules_to_not_convert": list(self.modules_to_not_convert)}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A whole checkpoint: text decoder, optional vision tower, optional quantisation."""

    text: TextConfig
    vision: VisionConfig | None = None
    quant: QuantConfig | None = None
    multimodal_layout: bool = True  # tensors under `model.language_model.` (official) vs `model.` (text-only)

    @property
    def is_moe(self) -> bool:
        return self.text.is_moe

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type not in DENSE_TYPES + MOE_TYPES:
            raise ConfigError(
                f"model_type={model_type!r} is not a Qwen3.5 model; expected one of {DENSE_TYPES + MOE_TYPES}"
            )
        moe = model_type in MOE_TYPES
        multimodal = "text_config" in d or model_type in ("qwen3_5", "qwen3_5_moe")
        text_d = d.get("text_config", d) if multimodal else d
        if not isinstance(text_d, dict):
            raise ConfigError("text_config must be an object")
        text = TextConfig.from_dict(text_d, moe=moe, tie_word_embeddings=d.get("tie_word_embeddings"))
        vision = VisionConfig.from_dict(d["vision_config"]) if isinstance(d.get("vision_config"), dict) else None
        qd = d.get("quantization_config") or text_d.get("quantization_config")
        quant = QuantConfig.from_dict(qd) if qd else None
        return cls(text=text, vision=vision, quant=quant, multimodal_layout=multimodal)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except TypeError as e:  # a field of the wrong type that dataclass construction tripped on
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The official multimodal layout, as shipped on the Hub, less the special token ids (image/video
        placeholders, vision markers): those come from the tokenizer (`loading.writer` adds them)."""
        moe = self.is_moe
        d: dict[str, Any] = {
            "architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
            "model_type": "qwen3_5_moe" if moe else "qwen3_5",
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "text_config": self.text.to_dict(moe),
        }
        if self.vision is not None:
            d["vision_config"] = self.vision.to_dict(moe)
        if self.quant is not None:
            d["quantization_config"] = self.quant.to_dict()
        return d


# ----------------------------------------------------------------------------------------------
# Presets: every published shape (docs/MODEL.md §1) plus tiny ones for tests.

_SMALL_VIT = VisionConfig(depth=12, hidden_size=768, num_heads=12, intermediate_size=3072)
_MEDIUM_VIT = VisionConfig(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096)
_LARGE_VIT = VisionConfig(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304)


def _layers(n: int, interval: int = 4) -> tuple[str, ...]:
    return tuple("full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n))


def _dense(layers, hidden, q, kv, v_heads, ffn, tie, vit, mtp=1) -> ModelConfig:
    text = TextConfig(num_hidden_layers=layers, layer_types=_layers(layers), hidden_size=hidden,
                      num_attention_heads=q, num_key_value_heads=kv, linear_num_value_heads=v_heads,
                      intermediate_size=ffn, tie_word_embeddings=tie, mtp_num_hidden_layers=mtp)
    return ModelConfig(text=text, vision=dataclasses.replace(vit, out_hidden_size=hidden))


def _moe(layers, hidden, q, kv, v_heads, experts, topk, inter, vit, mtp=1) -> ModelConfig:
    text = TextConfig(num_hidden_layers=layers, layer_types=_layers(layers), hidden_size=hidden,
                      num_attention_heads=q, num_key_value_heads=kv, linear_num_value_heads=v_heads,
                      intermediate_size=0, num_experts=experts, num_experts_per_tok=topk,
                      moe_intermediate_size=inter, shared_expert_intermediate_size=inter, mtp_num_hidden_layers=mtp)
    return ModelConfig(text=text, vision=dataclasses.replace(vit, out_hidden_size=hidden))


_TINY_VIT = VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                         num_position_embeddings=64)


def _tiny(moe: bool) -> ModelConfig:
    text = TextConfig(
        vocab_size=248_320, hidden_size=64, num_hidden_layers=4, layer_types=_layers(4),
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        intermediate_size=0 if moe else 128,
        num_experts=8 if moe else 0, num_experts_per_tok=2 if moe else 0,
        moe_intermediate_size=32 if moe else 0, shared_expert_intermediate_size=32 if moe else 0,
        tie_word_embeddings=not moe, max_position_embeddings=4096, mtp_num_hidden_layers=1,
    )
    return ModelConfig(text=text, vision=_TINY_VIT)


PRESETS: dict[str, ModelConfig] = {
    "tiny": _tiny(moe=False),
    "tiny-moe": _tiny(moe=True),
    "dense-0.8b": _dense(24, 1024, 8, 2, 16, 3584, True, _SMALL_VIT),
    "dense-2b": _dense(24, 2048, 8, 2, 16, 6144, True, _MEDIUM_VIT),
    "dense-4b": _dense(32, 2560, 16, 4, 32, 9216, True, _MEDIUM_VIT),
    "dense-9b": _dense(32, 4096, 16, 4, 32, 12288, False, _LARGE_VIT),
    "dense-27b": _dense(64, 5120, 24, 4, 48, 17408, False, _LARGE_VIT),
    "moe-35b-a3b": _moe(40, 2048, 16, 2, 32, 256, 8, 512, _LARGE_VIT),
    "moe-122b-a10b": _moe(48, 3072, 32, 2, 64, 256, 8, 1024, _LARGE_VIT),
    "moe-397b-a17b": _moe(60, 4096, 32, 2, 64, 512, 10, 1024, _LARGE_VIT),
    # Benchmark-only (not a published size): the flagship's layer shapes (hidden 4096, experts of 1024,
    # top-10 + shared, GDN 64 V / 16 QK heads, attention 32 Q / 2 KV heads) with 4 layers and 64 experts,
    # so its single-sequence decode reads what one 397B-A17B layer reads, on a small machine.
    "small-moe": _moe(4, 4096, 32, 2, 64, 64, 10, 1024, _LARGE_VIT),
}
# Short aliases matching the published names.
PRESET_ALIASES = {"0.8b": "dense-0.8b", "2b": "dense-2b", "4b": "dense-4b", "9b": "dense-9b", "27b": "dense-27b",
                  "35b-a3b": "moe-35b-a3b", "122b-a10b": "moe-122b-a10b", "397b-a17b": "moe-397b-a17b"}


def preset(name: str) -> ModelConfig:
    key = PRESET_ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[key]


def param_count(cfg: TextConfig) -> int:
    """Language-model parameter count (no vision, no MTP), for sanity checks against published sizes: the
    text tensors of the checkpoint table (`loading/names.py`)."""
    from .loading.names import text_tensors

    return sum(math.prod(shape) for _, shape in text_tensors(cfg))


__all__ = ["ConfigError", "ModelConfig", "TextConfig", "VisionConfig", "QuantConfig", "QUANTIZATION_CHOICES",
           "check_quantization", "RopeConfig",
           "PRESETS", "preset", "param_count"]
