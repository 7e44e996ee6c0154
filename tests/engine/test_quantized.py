"""`LLM(quantization=...)` end to end on the tiny random checkpoints (dense and MoE), bf16 so our int8/int4
kernels and the per-expert loop run; speculative decoding drafts through the quantised MTP head and lm_head."""

from __future__ import annotations

import pytest
import torch

from qwen35.engine import LLM, SamplingParams
from qwen35.model.linear import QuantLinear

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def _prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 20000, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_moe_ckpt"])
def test_generate_quantised(which, fmt, request):
    path = request.getfixturevalue(which)
    llm = LLM(str(path), dtype="bfloat16", quantization=fmt, max_model_len=256, max_num_seqs=4,
              kv_cache_memory=64 << 20)
    assert isinstance(llm.engine.model.lm_head, QuantLinear) and llm.engine.model.lm_head.fmt == fmt
    prompts = _prompts([5, 40, 17])
    outs = llm.generate(prompts, GREEDY)
    ids = [o.outputs[0].token_ids for o in outs]
    assert all(len(t) == 10 and o.outputs[0].finish_reason == "length" for t, o in zip(ids, outs))
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)] == ids  # deterministic


@pytest.mark.parametrize("draft_vocab", [None, 4096])
def test_speculative_with_quantised_head(tiny_ckpt, draft_vocab):
    """With a draft vocabulary the drafter takes its rows of the quantised lm_head, dequantised once."""
    spec = {"method": "mtp", "num_speculative_tokens": 2, "draft_vocab_size": draft_vocab}
    llm = LLM(str(tiny_ckpt), dtype="bfloat16", quantization="int8", max_model_len=256, max_num_seqs=2,
              kv_cache_memory=64 << 20, speculative_config={k: v for k, v in spec.items() if v is not None})
    drafter = llm.engine.runner.drafter
    if draft_vocab:
        head = llm.engine.model.lm_head
        assert drafter.head.shape == (len(drafter.vocab_ids), head.in_features)
        assert torch.equal(drafter.head, head.rows(drafter.vocab_ids, torch.bfloat16))
    out = llm.generate(_prompts([12]), GREEDY)[0]
    assert len(out.outputs[0].token_ids) == 10
