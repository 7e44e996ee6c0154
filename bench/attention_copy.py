"""Which attention heads copy? For every learnt token of the held-out chats that is copied from the context
(it occurs there once or twice), the attention mass each head of a trained checkpoint puts, at the position
that writes it, on the token's earlier occurrences ("copy") and on the positions right after the current
token's earlier occurrences ("induction", where a copying head of the previous-token + induction pair looks),
and the head's largest weight. A head that copies puts most of its mass there; the demo model's misses are
copies (docs/LOG.md), so this says whether a checkpoint has learnt the mechanism at all, beside what the
held-out loss (`bench/screen_recipe.py`) says about how well.

    .venv/bin/python bench/attention_copy.py [MODEL_DIR] [--samples 300] [--kind tool]

MODEL_DIR defaults to the shipped demo model; any checkpoint `qwen35 train` wrote works (the vocabulary is its
`tokenizer.json`). The held-out chats are `qwen35 eval`'s. The MTP layer is not loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from screen_recipe import heldout_forward  # noqa: E402

import qwen35.model.attention as attention  # noqa: E402
from qwen35.loading.checkpoint import load_model  # noqa: E402
from qwen35.tokenizer.tokenizer import Tokenizer  # noqa: E402
from qwen35.train.examples import IGNORE  # noqa: E402
from qwen35.train.synth import heldout  # noqa: E402

SHIPPED = Path(__file__).parent.parent / "src/qwen35/demo_model"


class Recorder:
    """Stands in for `paged_attention` in the attention module: keeps each layer's attention probabilities
    [heads, N, N] of a one-sequence prefill, in call order, then computes the real thing."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.inner = attention.paged_attention

    def __call__(self, q, k, v, k_cache, v_cache, batch, scale):
        n, heads, _ = q.shape
        keys = k.repeat_interleave(heads // k.shape[1], 1)
        logits = torch.einsum("nhd,mhd->hnm", q.float(), keys.float()) * scale
        logits.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        self.probs.append(logits.softmax(-1))
        return self.inner(q, k, v, k_cache, v_cache, batch, scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=str(SHIPPED))
    ap.add_argument("--samples", type=int, default=300, help="held-out chats drawn (of every kind)")
    ap.add_argument("--kind", default="tool", help="which kind of chat to look at")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.model, dtype=torch.float32, prepack=False, fuse=False)
    layers = [i for i, kind in enumerate(cfg.text.layer_types) if kind == "full_attention"]
    tok = Tokenizer.from_pretrained(args.model)
    recorder = Recorder()
    attention.paged_attention = recorder
    stats: dict[tuple[int, int], list[list[float]]] = {}
    for sample in heldout(args.samples):
        if sample.kind != args.kind:
            continue
        recorder.probs.clear()
        with torch.no_grad():
            ex, _ = heldout_forward(model, tok, sample)
        ids, rows = ex.ids, np.flatnonzero(ex.next_labels != IGNORE)
        context = ids[:rows[0] + 1]
        for t in rows:
            y = int(ex.next_labels[t])
            if not 0 < np.count_nonzero(context == y) <= 2:
                continue
            source = np.flatnonzero(ids[:t + 1] == y)
            after = np.flatnonzero(ids[:t] == ids[t]) + 1
            for layer, probs in enumerate(recorder.probs):
                for head, row in enumerate(probs[:, t].numpy()):
                    st = stats.setdefault((layer, head), [[], [], []])
                    st[0].append(row[source].sum())
                    st[1].append(row[after].sum())
                    st[2].append(row.max())
    if not stats:
        raise SystemExit(f"no copied tokens in the {args.kind!r} chats of {args.samples} held-out samples")
    print(f"{cpu_model()}; {args.model}; {len(next(iter(stats.values()))[0])} copied tokens of {args.kind!r} "
          f"chats; attention mass per head, means over those tokens")
    print("  layer  head   copy   induction   largest weight")
    for (layer, head), (copy, induction, largest) in sorted(stats.items()):
        print(f"  {layers[layer]:>5}  {head:>4}  {np.mean(copy):5.3f}  {np.mean(induction):10.3f}  "
              f"{np.mean(largest):15.3f}")


if __name__ == "__main__":
    main()
