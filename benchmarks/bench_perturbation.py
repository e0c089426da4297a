#!/usr/bin/env python
"""Window-aware occlusion against the naive computation (every perturbed volume through the
full sliding-window inference), on 3D volumes of two sizes.

Usage::

    python benchmarks/bench_perturbation.py                    # 96³ and 128³; the naive run timed at 96³
    python benchmarks/bench_perturbation.py --sizes 96 --naive-sizes 96 --out results.json

Setting: ``UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1,
act="relu", norm="batch")`` with seeded random weights; a seeded random volume; windows roi
48³, overlap 0.25, gaussian, ``sw_batch_size`` 4; target ``argmax:1``; Captum ``Occlusion``
with 16³ patches at stride 16 (fill 0), ``perturbations_per_eval`` 8.

Reported per size:

- window forwards done by ``esegeta`` (``Explainer(...).last_pass.windows_run``), the
  minimum (the clean pass over the windows reaching the target, plus one forward per pair of
  patch and window whose input the patch touches — counted here independently from the
  geometry) and the naive count (every perturbed volume re-runs every window: (patches + 1) ×
  windows, Captum's clean evaluation included);
- time of ours and, where ``--naive-sizes`` includes the size, of the naive computation in the
  same run (Captum ``Occlusion`` whose forward runs MONAI ``sliding_window_inference`` on each
  perturbed batch, mask held fixed), their ratio against the ratio of forward counts, and the
  largest difference between the two maps relative to the target's value.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_engine import Contention, machine_info  # noqa: E402

ROI, OVERLAP, SW_BATCH, PATCH, STRIDE, PER_EVAL = 48, 0.25, 4, 16, 16, 8


def minimum_forwards(active, shape) -> int:
    """Clean pass over the active windows + one forward per (patch, active window it touches)."""
    starts = [range(0, math.ceil((s - PATCH) / STRIDE) * STRIDE + 1, STRIDE) for s in shape]
    touched = 0
    for corner in itertools.product(*starts):
        for _, window in active:
            touched += all(w.start < c + PATCH and c < w.stop for w, c in zip(window, corner))
    return len(active) + touched


def run(size: int, naive: bool) -> dict:
    import torch
    from captum.attr import Occlusion
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from esegeta_monai import Explainer
    from esegeta_monai.core.targets import ArgmaxRegion

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1, act="relu", norm="batch").eval()
    x = torch.randn((1, 1, size, size, size), generator=torch.Generator().manual_seed(1))
    target = ArgmaxRegion(1)
    settings = dict(roi_size=(ROI,) * 3, overlap=OVERLAP, mode="gaussian", sw_batch_size=SW_BATCH)
    explainer = Explainer(net, "occlusion", target, sliding_window_shapes=(PATCH,) * 3, strides=(STRIDE,) * 3, fill=0.0,
                          perturbations_per_eval=PER_EVAL, **settings)
    explainer(x[..., :ROI, :ROI, :ROI])  # warm-up
    with Contention() as ours_load:
        start = time.perf_counter()
        ours = explainer(x)
        ours_s = time.perf_counter() - start
    window_pass = explainer.last_pass
    windows = len(window_pass.plan.slices)
    patches = math.prod(math.ceil((size - PATCH) / STRIDE) + 1 for _ in range(3))
    result = {
        "size": size, "windows": windows, "patches": patches,
        "forwards_ours": window_pass.windows_run,
        "forwards_minimum": minimum_forwards(window_pass.active_windows(1), x.shape[2:]),
        "forwards_naive": (patches + 1) * windows,
        "time_ours_s": ours_s, "busy_ours": ours_load.foreign + ours_load.stolen,
    }
    if naive:
        with torch.no_grad():
            prediction = sliding_window_inference(x, (ROI,) * 3, SW_BATCH, net, overlap=OVERLAP, mode="gaussian")
            weights = target.weights(prediction)
            value = float((prediction * weights).sum())

        def stitched(batch):
            with torch.no_grad():
                y = sliding_window_inference(batch, (ROI,) * 3, SW_BATCH, net, overlap=OVERLAP, mode="gaussian")
            return (y * weights).flatten(1).sum(1)

        with Contention() as naive_load:
            start = time.perf_counter()
            reference = Occlusion(stitched).attribute(x, sliding_window_shapes=(1,) + (PATCH,) * 3, strides=(1,) + (STRIDE,) * 3,
                                                      baselines=0.0, perturbations_per_eval=PER_EVAL)
            naive_s = time.perf_counter() - start
        result.update(time_naive_s=naive_s, busy_naive=naive_load.foreign + naive_load.stolen,
                      max_difference_over_target=float((ours - reference).abs().max()) / abs(value))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--naive-sizes", type=int, nargs="*", default=[96], help="sizes at which the naive computation is timed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from esegeta_monai.apps.allocator import tune_allocator

    tune_allocator()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'size':>5} {'windows':>7} {'patches':>7} {'ours':>7} {'minimum':>7} {'naive':>7} {'count ×':>8} "
          f"{'ours s':>8} {'naive s':>8} {'speed-up':>8} {'/ count ×':>9} {'max diff/T':>10}")
    for size in args.sizes:
        row = run(size, size in args.naive_sizes)
        row["count_ratio"] = row["forwards_naive"] / row["forwards_ours"]
        if "time_naive_s" in row:
            row["speed_up"] = row["time_naive_s"] / row["time_ours_s"]
            row["speed_up_over_count_ratio"] = row["speed_up"] / row["count_ratio"]
        rows.append(row)
        print(f"{size:5d} {row['windows']:7d} {row['patches']:7d} {row['forwards_ours']:7d} {row['forwards_minimum']:7d} "
              f"{row['forwards_naive']:7d} {row['count_ratio']:8.1f} {row['time_ours_s']:8.1f} "
              f"{row.get('time_naive_s', float('nan')):8.1f} {row.get('speed_up', float('nan')):8.1f} "
              f"{row.get('speed_up_over_count_ratio', float('nan')):9.2f} {row.get('max_difference_over_target', float('nan')):10.1e}",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
