"""Engine settings: speculative decoding (vLLM's and SGLang's forms), the per-request drafting pause, and
EngineConfig's checks of its values."""

from __future__ import annotations

import pytest

from qwen35.engine.config import EngineConfig
from qwen35.engine.spec_config import SpeculativeConfig
from qwen35.engine.speculative import FIRST_PAUSE, MAX_PAUSE, DraftPolicy, SpecStats


@pytest.mark.parametrize("method", ["mtp", "qwen3_next_mtp", "qwen3_5_mtp"])
def test_vllm_json(method):
    cfg = SpeculativeConfig.from_dict({"method": method, "num_speculative_tokens": 3})
    assert cfg.k == 3 and cfg.draft_vocab_size is None
    assert EngineConfig(model="m", speculative_config={"method": method, "num_speculative_tokens": 1}) \
        .speculative_config.k == 1


@pytest.mark.parametrize("raw,message", [
    ({"method": "eagle3", "num_speculative_tokens": 2}, "must be one of"),
    ({"method": "mtp"}, "needs num_speculative_tokens"),
    ({"method": "mtp", "num_speculative_tokens": 9}, "[1, 8]"),
    ({"method": "mtp", "num_speculative_tokens": True}, "[1, 8]"),
    ({"method": "mtp", "num_speculative_tokens": 2, "prompt_lookup_max": 3}, "unsupported key"),
    ({"method": "mtp", "num_speculative_tokens": 2, "model": "other/model"}, "own MTP head"),
    ({"method": "mtp", "num_speculative_tokens": 2, "draft_vocab_size": 0}, "positive integer"),
    ({"method": "mtp", "num_speculative_tokens": 2, "acceptance_floor": 1.5}, "acceptance_floor"),
    ([1, 2], "JSON object"),
])
def test_bad_json_names_the_problem(raw, message):
    with pytest.raises(ValueError, match=message if message[0] != "[" else r"\[1, 8\]"):
        SpeculativeConfig.from_dict(raw, target_model="me")


def test_sglang_flags():
    assert SpeculativeConfig.from_sglang("NEXTN", 3, 1, 4).k == 3
    assert SpeculativeConfig.from_sglang("nextn").k == 3
    assert SpeculativeConfig.from_sglang("EAGLE", None, None, 3).k == 2
    with pytest.raises(ValueError, match="topk 1"):
        SpeculativeConfig.from_sglang("NEXTN", 3, 4)
    with pytest.raises(ValueError, match="num-steps \\+ 1"):
        SpeculativeConfig.from_sglang("NEXTN", 3, 1, 8)
    with pytest.raises(ValueError, match="NEXTN"):
        SpeculativeConfig.from_sglang("MEDUSA", 3)


def test_policy_pauses_while_drafts_fail_and_backs_off():
    p = DraftPolicy(k=2, acceptance_floor=0.3)
    for _ in range(3):
        assert p.budget() == 2
        p.record(2, 0)
    paused = [p.budget() for _ in range(FIRST_PAUSE)]
    assert paused == [0] * FIRST_PAUSE and p.budget() == 2
    for _ in range(3):  # still failing: the next pause is twice as long
        p.record(2, 0)
    assert [p.budget() for _ in range(2 * FIRST_PAUSE)] == [0] * (2 * FIRST_PAUSE)
    for _ in range(10):
        p.record(2, 0)
        while p.budget() == 0:
            pass
    assert p.next_pause <= MAX_PAUSE


def test_policy_keeps_drafting_when_drafts_are_kept():
    p = DraftPolicy(k=3, acceptance_floor=0.3)
    for _ in range(20):
        assert p.budget() == 3
        p.record(3, 2)


def test_stats_per_position():
    s = SpecStats(3)
    s.record(3, 2)
    s.record(2, 0)
    s.record(0, 0)  # no drafts: not a round
    assert s.as_counters() == {"spec_num_drafts": 2, "spec_num_draft_tokens": 5, "spec_num_accepted_tokens": 2,
                               "spec_accepted_pos_0": 1, "spec_accepted_pos_1": 1, "spec_accepted_pos_2": 0}


@pytest.mark.parametrize("field,value", [
    ("threads", -1), ("threads", 2.5), ("max_model_len", 100.5), ("max_num_seqs", "4"), ("max_num_seqs", 0),
    ("kv_cache_memory", 0), ("block_size", True), ("prefix_cache_fraction", 2.0), ("prefix_cache_fraction", -1.0),
    ("max_num_encoder_patches", -1),
])
def test_engine_config_names_a_bad_value(field, value):
    """Checked when the config is built (before any loading), not deep inside torch or the memory plan."""
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="unused", **{field: value})
