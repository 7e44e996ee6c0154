"""The step metadata: every field against a direct per-token computation, and persistent buffers reused."""

from __future__ import annotations

import torch

from qwen35.ops.batch import BatchBuilder, ForwardBatch, SeqSpec

BS = 4


def _specs() -> list[SeqSpec]:
    return [SeqSpec([5, 6, 7], 0, 2, [9, 3]), SeqSpec([8], 6, 3, [1, 4]), SeqSpec([1, 2], 9, 4, [0, 7, 2, 5])]


def _check(batch: ForwardBatch, specs: list[SeqSpec], sample: list[int]) -> None:
    ids, pos, slots, starts = [], [], [], [0]
    for s in specs:
        ids += list(s.token_ids)
        for j in range(len(s.token_ids)):
            p = s.context_len + j
            pos.append(p)
            slots.append(s.block_table[p // BS] * BS + p % BS)
        starts.append(starts[-1] + len(s.token_ids))
    assert batch.input_ids.tolist() == ids
    assert batch.positions.tolist() == batch.cache_positions.tolist() == pos
    assert batch.slot_mapping.tolist() == slots
    assert batch.query_start_loc.tolist() == starts
    assert batch.query_lens.tolist() == [len(s.token_ids) for s in specs]
    assert batch.context_lens.tolist() == [s.context_len for s in specs]
    assert batch.seq_lens.tolist() == [s.context_len + len(s.token_ids) for s in specs]
    assert batch.state_slots.tolist() == [s.state_slot for s in specs]
    assert batch.last_index.tolist() == [e - 1 for e in starts[1:]]
    assert batch.logits_indices.tolist() == [starts[b + 1] - 1 for b in sample]
    for b, s in enumerate(specs):
        n = -(-(s.context_len + len(s.token_ids)) // BS)
        assert batch.block_tables[b, :n].tolist() == list(s.block_table[:n])
    x = torch.arange(batch.num_tokens, dtype=torch.float32)[:, None]
    assert torch.equal(batch.to_packed(batch.to_padded(x)), x)


def test_fields_match_per_token_definition():
    specs = _specs()
    batch = ForwardBatch.build(specs, BS)
    _check(batch, specs, [0, 1, 2])
    assert batch.slot_range == (2, 5) and not batch.is_decode and not batch.fresh_single
    assert (batch.max_query_len, batch.max_seq_len) == (3, 11)
    assert batch.snapshot_slots is None


def test_persistent_builder_reuses_and_grows_its_buffer():
    builder = BatchBuilder(BS, capacity=BatchBuilder.capacity_for(8, 4, 4))
    buffer = builder._host
    specs = _specs()
    for step in range(3):  # big, small, big: stale values from a bigger step never leak into a smaller one
        use = specs if step != 1 else specs[1:2]
        sample = [2, 0] if step != 1 else [0]
        batch = builder.build([s.token_ids for s in use], [s.context_len for s in use],
                              [s.state_slot for s in use], [s.block_table for s in use], sample=sample)
        _check(batch, use, sample)
        assert batch.input_ids.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    assert batch.is_decode is False and builder._host is buffer
    long = [SeqSpec(list(range(400)), 0, 0, list(range(100)))]
    batch = builder.build([s.token_ids for s in long], [0], [0], [long[0].block_table])  # more than planned
    _check(batch, long, [0])
    assert batch.fresh_single and builder._host.numel() > buffer.numel()


def test_scattered_slots_have_no_range():
    specs = [SeqSpec([1], 3, 5, [0]), SeqSpec([2], 3, 1, [1])]
    batch = ForwardBatch.build(specs, BS)
    assert batch.slot_range is None and batch.is_decode
    _check(batch, specs, [0, 1])
