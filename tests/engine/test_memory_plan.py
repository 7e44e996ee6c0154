"""The memory plan logged at start-up says how much context the cache holds."""

from __future__ import annotations

import pytest
import torch

from qwen35.config import preset
from qwen35.engine.memory import MemoryPlan, plan_memory
from qwen35.model.cache import kv_bytes_per_token, state_bytes_per_slot

CFG = preset("tiny").text


def test_describe_states_tokens_full_sequences_and_longest_context():
    block = kv_bytes_per_token(CFG, torch.float32) * 16
    slot = state_bytes_per_slot(CFG, torch.float32)
    plan = plan_memory(CFG, torch.float32, 4 * slot + 100 * block + block // 2, max_num_seqs=4, max_model_len=500,
                       prefix_fraction=0.0)
    assert (plan.num_blocks, plan.run_slots, plan.prefix_slots, plan.max_model_len) == (100, 4, 0, 500)
    assert plan.kv_tokens == 1600
    assert plan.full_sequences == 3  # 500 tokens take 32 blocks of 16
    text = plan.describe()
    assert text.startswith("cache plan: 100 K/V blocks x 16 tokens (")  # the earlier content is kept
    assert "4 running + 0 prefix-cache GDN state slots" in text and "MiB each" in text
    assert "1600 K/V tokens in all" in text
    assert "room for 3 full max_model_len=500 sequences at once (max_num_seqs=4)" in text
    assert "longest single context the cache can hold 1600 tokens" in text


def test_exactly_one_sequence_and_a_plan_without_a_length():
    block = kv_bytes_per_token(CFG, torch.float32) * 16
    slot = state_bytes_per_slot(CFG, torch.float32)
    plan = plan_memory(CFG, torch.float32, slot + 64 * block, max_num_seqs=1, max_model_len=1024, prefix_fraction=0)
    assert plan.full_sequences == 1 and "room for 1 full max_model_len=1024" in plan.describe()
    with pytest.raises(ValueError, match="fewer than one max_model_len=1025 sequence"):
        plan_memory(CFG, torch.float32, slot + 64 * block, max_num_seqs=1, max_model_len=1025, prefix_fraction=0)
    bare = MemoryPlan(10, 16, 1, 0, block, slot)  # built by hand: no length, no context clause
    assert bare.full_sequences == 0 and "context" not in bare.describe()


@pytest.mark.parametrize("seqs", [1, 2, 16])
@pytest.mark.parametrize("prefix", [0.0, 0.3])
def test_the_default_budget_always_holds_every_sequence_at_full_length(seqs, prefix):
    """The default budget (`full_budget`) leaves, after the prefix cache's share, K/V blocks for max_num_seqs
    sequences of max_model_len. It once left fewer than one when state slots were large against K/V blocks
    (the demo model with max_num_seqs=1 could not start)."""
    from qwen35.default_model import default_model_dir
    from qwen35.config import ModelConfig
    from qwen35.engine.memory import full_budget

    cfg = ModelConfig.from_file(default_model_dir() / "config.json").text
    budget = full_budget(cfg, torch.bfloat16, seqs, 8192, 16, prefix, mtp_layers=1, num_speculative_tokens=2)
    plan = plan_memory(cfg, torch.bfloat16, budget, seqs, 8192, 16, prefix, mtp_layers=1, num_speculative_tokens=2)
    assert plan.num_blocks >= seqs * 8192 // 16
