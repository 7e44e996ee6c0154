"""The packed batch is exact: a sequence gives the same logits alone, in a mixed batch, with its state in
any slot, with its prompt split into chunks, and through prefill-then-decode."""

from __future__ import annotations

import pytest
import torch

from qwen35.loading.checkpoint import load_model
from qwen35.model import ForwardBatch, SeqSpec
from tests.model.helpers import BLOCK, all_logits, blocks_for

TOL = 2e-5


@pytest.fixture(scope="module", params=["tiny_ckpt", "tiny_moe_ckpt"])
def model(request):
    m, _ = load_model(request.getfixturevalue(request.param), dtype=torch.float32)
    return m


def _prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 5000, (n,), generator=gen).tolist() for n in lengths]


def test_mixed_batch_equals_alone(model):
    prompts = _prompts([1, 65, 130, 7])
    together = all_logits(model, prompts)
    for p, got in zip(prompts, together):
        assert (got - all_logits(model, [p])[0]).abs().max() < TOL


@torch.no_grad()
def test_chunked_prefill_and_scattered_slots(model):
    """Prompt fed in uneven chunks, two sequences interleaved, state slots 3 and 1 (not contiguous)."""
    prompts = _prompts([100, 77], seed=1)
    want = [all_logits(model, [p])[0][-1] for p in prompts]
    cache = model.new_cache(num_blocks=64, block_size=BLOCK, num_slots=4)
    slots, done = [3, 1], [0, 0]
    chunks = [[30, 1, 50, 19], [5, 60, 12]]
    last = [None, None]
    for step in range(4):
        seqs, who = [], []
        for i in range(2):
            if step < len(chunks[i]):
                n = chunks[i][step]
                seqs.append(SeqSpec(prompts[i][done[i]:done[i] + n], done[i], slots[i], blocks_for(slots[i], 256)))
                who.append(i)
                done[i] += n
        batch = ForwardBatch.build(seqs, BLOCK)
        logits = model.logits(model(batch, cache)[batch.last_index])
        for j, i in enumerate(who):
            last[i] = logits[j]
    assert done == [100, 77]
    for got, w in zip(last, want):
        assert (got - w).abs().max() < TOL


def test_batch_rejects_bad_specs():
    with pytest.raises(ValueError, match="at least one sequence"):
        ForwardBatch.build([], BLOCK)
    with pytest.raises(ValueError, match="at least one new token"):
        ForwardBatch.build([SeqSpec([], 0, 0, [0])], BLOCK)
    with pytest.raises(ValueError, match="cannot hold"):
        ForwardBatch.build([SeqSpec([1] * 20, 0, 0, [0])], BLOCK)
