"""Vision tower speed: ours (model/vision.py) against transformers' `Qwen3_5VisionModel` with the same random
weights, fp32 and bf16, on a batch of media grids.

    .venv/bin/python bench/bench_tower.py [--preset dense-0.8b] [--grids "1,64,64"] [--reps 3] [--threads 2]

`--grids`: items separated by spaces, each t,h,w in patches (1,64,64 is one 1024x1024 image; 32,16,16 a video
of 32 temporal patches of 256x256). The two models run alternately, so load from other processes hits both
alike; medians are reported, with the ratio and the largest difference relative to the output's scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from qwen35.config import preset  # noqa: E402
from qwen35.model.vision import VisionTower  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dense-0.8b")
    ap.add_argument("--grids", default="1,64,64")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    torch.set_num_threads(args.threads)
    grids = [tuple(int(x) for x in g.split(",")) for g in args.grids.split()]
    vision = preset(args.preset).vision
    torch.manual_seed(0)
    theirs = Qwen3_5VisionModel(Qwen3_5VisionConfig(**{k: v for k, v in vision.to_dict(False).items()
                                                       if k != "model_type"})).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            is_norm = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 1 or "pos" in name else 0.02) + is_norm)
    ours = VisionTower(vision).eval()
    ours.load_state_dict(theirs.state_dict())
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), ours.patch_dim)
    grid_thw = torch.tensor(grids)
    print(f"{args.preset} tower, grids {grids} ({pixels.shape[0]} patches), {args.threads} threads")
    for dtype in (torch.float32, torch.bfloat16):
        theirs.to(dtype), ours.to(dtype)
        runs = {"ours": lambda: ours(pixels, grids),
                "transformers": lambda: theirs(pixels.to(dtype), grid_thw=grid_thw).pooler_output}
        times: dict[str, list[float]] = {k: [] for k in runs}
        out = {}
        with torch.inference_mode():
            for rep in range(args.reps + 1):  # the first is warm-up
                for key, fn in runs.items():
                    start = time.perf_counter()
                    out[key] = fn().float()
                    if rep:
                        times[key].append(time.perf_counter() - start)
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["transformers"])
        diff = ((out["ours"] - out["transformers"]).abs().max() / out["transformers"].abs().max()).item()
        print(f"{str(dtype).removeprefix('torch.'):9s} ours {t_ours:7.3f} s  transformers {t_theirs:7.3f} s  "
              f"ratio {t_theirs / t_ours:5.2f}x  max diff / scale {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
