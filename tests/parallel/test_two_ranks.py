"""Two ranks (processes on this machine, gloo) against one: greedy tokens identical and fp32 logits equal to
rounding, across chunked prefill, decode, a prefix-cache hit and MTP drafting; each rank holds half the
weights. One scenario per split (tests/parallel/scenario.py); the dense and the width-split MoE ones are
slow (the expert-parallel one covers the same attention, GDN and vocabulary splits in the default run). Ranks
on one machine all-reduce through shared memory; the width-split MoE scenario runs through gloo instead."""

from __future__ import annotations

import pytest

from qwen35.default_model import default_model_dir

from .conftest import run_scenario


def check(r: dict, expert_parallel: bool = False) -> None:
    # chunked prefill, decode and verify steps (the trained demo's drafts are mostly accepted: 14 steps)
    assert r["same_steps"] and r["steps"] >= 12
    assert r["tokens_equal"], r["tokens"]
    # fp32 sums in another order: about an ulp of the largest logit (the trained demo's reach 19)
    assert r["max_logit_diff"] <= max(1e-5, 1e-6 * r["logit_scale"]), r
    assert r["max_logprob_diff"] <= 1e-4, r
    usage = r["usage"]
    assert usage["prefix_hits"] == r["single_usage"]["prefix_hits"] == 1  # the follow-up turn hit the cache
    assert usage["spec_num_draft_tokens"] == r["single_usage"]["spec_num_draft_tokens"] > 0  # MTP drafted
    assert usage["spec_num_accepted_tokens"] == r["single_usage"]["spec_num_accepted_tokens"]
    assert 0.49 < r["weight_bytes_ratio"] < 0.55, r["weight_bytes_ratio"]  # half the weights per rank
    # the same memory budget holds twice the K/V blocks: each rank caches half the K/V heads
    assert usage["blocks_total"] >= 2 * r["single_usage"]["blocks_total"] - 2
    if expert_parallel:
        load = usage["expert_load"]
        assert len(load) == 2 and sum(load) > 0 and min(load) > 0


def test_moe_expert_parallel(moe_ckpt):
    r = run_scenario(moe_ckpt, "--ep", "--spec", "2")
    check(r, expert_parallel=True)
    assert "expert parallel" in r["parallel"]


@pytest.mark.slow
def test_moe_tensor_parallel(moe_ckpt):
    r = run_scenario(moe_ckpt, "--spec", "2", env={"QWEN35_SHM_ALLREDUCE": "0"})  # all-reduce through gloo
    check(r)
    assert "columns" in r["parallel"]


@pytest.mark.slow
def test_dense_tensor_parallel():
    r = run_scenario(default_model_dir(), "--spec", "2")
    check(r)
    assert r["usage"]["spec_num_accepted_tokens"] > 0  # the trained head's drafts are kept, then rolled back


@pytest.mark.gpu
def test_nccl_two_gpus(moe_ckpt):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    check(run_scenario(moe_ckpt, "--ep", "--spec", "2", "--device", "cuda"), expert_parallel=True)
