"""Write a random checkpoint of a Qwen3.5 shape in the official Hub layout (`qwen35 init`).

Layout: config.json (multimodal wrapper), generation_config.json, sharded `model-XXXXX-of-YYYYY.safetensors`
with `model.safetensors.index.json`, tokenizer files and chat_template.jinja. Tensor names, shapes and
on-disk dtypes follow architecture.md §6 (fused experts, F32 `A_log` and GDN norm weight, vision tower and
MTP head included), so transformers and vLLM load it like a real release. Shards are generated and written
one at a time, so memory stays near one shard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig, TextConfig, VisionConfig

# init kinds: "normal" (std 0.02), "norm" (zero-centred RMSNorm: small noise around 0), "ones_noise",
# "a_log" (log U(1, 16)), "dt_bias", "conv", "zeros"
Spec = tuple[str, tuple[int, ...], torch.dtype, str]


def _layer_specs(cfg: TextConfig, prefix: str, full_attention: bool, per_expert: bool, dt) -> list[Spec]:
    h = cfg.hidden_size
    specs: list[Spec] = [(prefix + "input_layernorm.weight", (h,), dt, "norm"),
                         (prefix + "post_attention_layernorm.weight", (h,), dt, "norm")]
    if full_attention:
        a, d = prefix + "self_attn.", cfg.head_dim
        specs += [(a + "q_proj.weight", (2 * cfg.num_attention_heads * d, h), dt, "normal"),
                  (a + "k_proj.weight", (cfg.num_key_value_heads * d, h), dt, "normal"),
                  (a + "v_proj.weight", (cfg.num_key_value_heads * d, h), dt, "normal"),
                  (a + "o_proj.weight", (h, cfg.num_attention_heads * d), dt, "normal"),
                  (a + "q_norm.weight", (d,), dt, "norm"), (a + "k_norm.weight", (d,), dt, "norm")]
    else:
        g, hv = prefix + "linear_attn.", cfg.linear_num_value_heads
        specs += [(g + "in_proj_qkv.weight", (cfg.linear_conv_dim, h), dt, "normal"),
                  (g + "in_proj_z.weight", (cfg.linear_value_dim, h), dt, "normal"),
                  (g + "in_proj_b.weight", (hv, h), dt, "normal"),
                  (g + "in_proj_a.weight", (hv, h), dt, "normal"),
                  (g + "conv1d.weight", (cfg.linear_conv_dim, 1, cfg.linear_conv_kernel_dim), dt, "conv"),
                  (g + "dt_bias", (hv,), dt, "dt_bias"),
                  (g + "A_log", (hv,), torch.float32, "a_log"),
                  (g + "norm.weight", (cfg.linear_value_head_dim,), torch.float32, "ones_noise"),
                  (g + "out_proj.weight", (h, cfg.linear_value_dim), dt, "normal")]
    m = prefix + "mlp."
    if cfg.is_moe:
        E, inter, shared = cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
        specs.append((m + "gate.weight", (E, h), dt, "normal"))
        if per_expert:  # MTP blocks ship per-expert tensors
            for e in range(E):
                specs += [(f"{m}experts.{e}.gate_proj.weight", (inter, h), dt, "normal"),
                          (f"{m}experts.{e}.up_proj.weight", (inter, h), dt, "normal"),
                          (f"{m}experts.{e}.down_proj.weight", (h, inter), dt, "normal")]
        else:
            specs += [(m + "experts.gate_up_proj", (E, 2 * inter, h), dt, "normal"),
                      (m + "experts.down_proj", (E, h, inter), dt, "normal")]
        specs += [(m + "shared_expert.gate_proj.weight", (shared, h), dt, "normal"),
                  (m + "shared_expert.up_proj.weight", (shared, h), dt, "normal"),
                  (m + "shared_expert.down_proj.weight", (h, shared), dt, "normal"),
                  (m + "shared_expert_gate.weight", (1, h), dt, "normal")]
    else:
        i = cfg.intermediate_size
        specs += [(m + "gate_proj.weight", (i, h), dt, "normal"), (m + "up_proj.weight", (i, h), dt, "normal"),
                  (m + "down_proj.weight", (h, i), dt, "normal")]
    return specs


def _vision_specs(v: VisionConfig, dt) -> list[Spec]:
    p, c, w, inter = "model.visual.", v.hidden_size, v.hidden_size, v.intermediate_size
    merged = c * v.spatial_merge_size ** 2
    specs: list[Spec] = [
        (p + "patch_embed.proj.weight", (c, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size),
         dt, "normal"),
        (p + "patch_embed.proj.bias", (c,), dt, "zeros"),
        (p + "pos_embed.weight", (v.num_position_embeddings, c), dt, "normal"),
    ]
    for j in range(v.depth):
        b = f"{p}blocks.{j}."
        specs += [(b + "norm1.weight", (w,), dt, "ones_noise"), (b + "norm1.bias", (w,), dt, "zeros"),
                  (b + "norm2.weight", (w,), dt, "ones_noise"), (b + "norm2.bias", (w,), dt, "zeros"),
                  (b + "attn.qkv.weight", (3 * w, w), dt, "normal"), (b + "attn.qkv.bias", (3 * w,), dt, "zeros"),
                  (b + "attn.proj.weight", (w, w), dt, "normal"), (b + "attn.proj.bias", (w,), dt, "zeros"),
                  (b + "mlp.linear_fc1.weight", (inter, w), dt, "normal"),
                  (b + "mlp.linear_fc1.bias", (inter,), dt, "zeros"),
                  (b + "mlp.linear_fc2.weight", (w, inter), dt, "normal"),
                  (b + "mlp.linear_fc2.bias", (w,), dt, "zeros")]
    specs += [(p + "merger.norm.weight", (c,), dt, "ones_noise"), (p + "merger.norm.bias", (c,), dt, "zeros"),
              (p + "merger.linear_fc1.weight", (merged, merged), dt, "normal"),
              (p + "merger.linear_fc1.bias", (merged,), dt, "zeros"),
              (p + "merger.linear_fc2.weight", (v.out_hidden_size, merged), dt, "normal"),
              (p + "merger.linear_fc2.bias", (v.out_hidden_size,), dt, "zeros")]
    return specs


def checkpoint_specs(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> list[Spec]:
    """Every tensor of an official checkpoint of this shape: (name, shape, on-disk dtype, init kind)."""
    t, h = cfg.text, cfg.text.hidden_size
    lm = "model.language_model."
    specs: list[Spec] = [(lm + "embed_tokens.weight", (t.vocab_size, h), dtype, "normal")]
    for i, kind in enumerate(t.layer_types):
        specs += _layer_specs(t, f"{lm}layers.{i}.", kind == "full_attention", False, dtype)
    specs.append((lm + "norm.weight", (h,), dtype, "norm"))
    if not t.tie_word_embeddings:
        specs.append(("lm_head.weight", (t.vocab_size, h), dtype, "normal"))
    if cfg.vision is not None:
        specs += _vision_specs(cfg.vision, dtype)
    for j in range(t.mtp_num_hidden_layers):
        specs += _layer_specs(t, f"mtp.layers.{j}.", True, True, dtype)
    if t.mtp_num_hidden_layers:
        specs += [("mtp.fc.weight", (h, 2 * h), dtype, "normal"),
                  ("mtp.pre_fc_norm_embedding.weight", (h,), dtype, "norm"),
                  ("mtp.pre_fc_norm_hidden.weight", (h,), dtype, "norm"),
                  ("mtp.norm.weight", (h,), dtype, "norm")]
    return specs


def _random(shape: tuple[int, ...], kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, generator=gen) * 0.02
    if kind == "conv":
        return torch.randn(shape, generator=gen) * 0.3
    if kind == "norm":
        return torch.randn(shape, generator=gen) * 0.1
    if kind == "ones_noise":
        return 1.0 + torch.randn(shape, generator=gen) * 0.1
    if kind == "dt_bias":  # Mamba-style: softplus(dt_bias) log-uniform in [1e-3, 1e-1], as trained models have
        dt = torch.exp(torch.empty(shape).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
        return dt + torch.log(-torch.expm1(-dt))
    if kind == "a_log":
        return torch.empty(shape).uniform_(1.0, 16.0, generator=gen).log_()
    if kind == "zeros":
        return torch.zeros(shape)
    raise ValueError(f"unknown init kind {kind!r}")


def _nbytes(spec: Spec) -> int:
    n = 1
    for s in spec[1]:
        n *= s
    return n * torch.empty((), dtype=spec[2]).element_size()


def write_random_checkpoint(cfg: ModelConfig, out_dir: str | Path, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 2 << 30,
                            tokenizer: bool = True) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = checkpoint_specs(cfg, dtype)
    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        b = _nbytes(spec)
        if shards[-1] and size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += b
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {s[0]: _random(s[1], s[3], gen).to(s[2]) for s in shard}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for key in tensors:
            weight_map[key] = name
        total += sum(_nbytes(s) for s in shard)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = cfg.to_dict()
    config["text_config"]["dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": 248044, "eos_token_id": [248046, 248044], "pad_token_id": 248044,
                  "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer:
        from ..tokenizer import Tokenizer

        Tokenizer.from_vocab().save(out)
    return out
