"""Writing per-sequence states into rows of a state pool (GDN snapshot slots of speculative decoding)."""

from __future__ import annotations

import torch


def write_rows(pool: torch.Tensor, rows: torch.Tensor, states: torch.Tensor) -> None:
    """pool[rows[b]] = states[b]. On CPU one row copy each (faster than `index_copy_` for the 1 MiB states
    here), which also allows `states` to be rows of `pool`: a row that is its own source is skipped.
    Elsewhere one `index_copy_` (then `states` must not alias `pool`)."""
    if pool.device.type != "cpu":
        pool.index_copy_(0, rows, states)
        return
    for b, r in enumerate(rows.tolist()):
        dst = pool[r]
        if dst.data_ptr() != states[b].data_ptr():
            dst.copy_(states[b])
