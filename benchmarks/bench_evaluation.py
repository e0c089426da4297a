#!/usr/bin/env python
"""Time and peak memory of infidelity and sensitivity through sliding windows on 3D volumes,
against one sliding-window inference of the same volume.

Usage::

    python benchmarks/bench_evaluation.py                 # 96³ and 160³
    python benchmarks/bench_evaluation.py --sizes 128 --out results.json

Setting: ``UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)`` with
seeded random weights, a seeded random volume, windows 64³, overlap 0.25, gaussian,
``sw_batch_size`` 2, target ``argmax:1``, saliency maps. Measurements, each in a fresh process
(this script with ``--measure``), after a warm-up of the same call on a small volume:
``inference`` (MONAI ``sliding_window_inference`` under ``no_grad``), ``infidelity`` (16 noise
draws over the whole volume, 4 perturbed volumes per evaluation), ``infidelity_roi`` (the same
draws restricted to a 32³ box: only the windows it touches re-run) and ``sensitivity`` (10
draws, each explanation exact through the windows). Memory: extra peak RSS (VmHWM reset, as in
``bench_engine.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_engine import MARKER, MIB, Contention, RssPeak, machine_info  # noqa: E402

MEASUREMENTS = ("inference", "infidelity", "infidelity_roi", "sensitivity")


def measure(name: str, size: int, threads: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from esegeta_monai import Explainer
    from esegeta_monai.apps.allocator import tune_allocator
    from esegeta_monai.evaluation import infidelity, sensitivity

    tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1, act="relu", norm="batch").eval()
    windows = dict(roi_size=(64,) * 3, overlap=0.25, mode="gaussian", sw_batch_size=2)
    explainer = Explainer(net, "saliency", "argmax:1", abs=False, **windows)

    def call(x):
        if name == "inference":
            with torch.no_grad():
                return sliding_window_inference(x, (64,) * 3, 2, net, overlap=0.25, mode="gaussian")
        attribution = explainer(x)
        if name == "sensitivity":
            return sensitivity(explainer, x, n_samples=10)
        roi = [(0, 32)] * 3 if name == "infidelity_roi" else None
        return infidelity(explainer, x, attribution, n_samples=16, per_eval=4, roi=roi)

    call(torch.randn((1, 1, 72, 72, 72), generator=torch.Generator().manual_seed(2)))  # warm-up (2 windows per axis)
    x = torch.randn((1, 1, size, size, size), generator=torch.Generator().manual_seed(1))
    with Contention() as load, RssPeak() as peak:
        start = time.perf_counter()
        call(x)
        seconds = time.perf_counter() - start
    return {"name": name, "size": size, "time_s": seconds, "extra_mib": peak.extra / MIB, "busy": load.foreign + load.stolen}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(MARKER + json.dumps(measure(args.measure, args.size, args.threads)), flush=True)
        return 0
    rows = []
    print(f"{'size':>5} {'measurement':15s} {'time s':>8} {'× inf':>7} {'extra MiB':>10} {'× inf':>7} {'busy':>5}")
    for size in args.sizes:
        base = None
        for name in MEASUREMENTS:
            command = [sys.executable, str(Path(__file__).resolve()), "--measure", name, "--size", str(size), "--threads", str(args.threads)]
            process = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
            if process.returncode or not lines:
                print(f"{size:5d} {name:15s} ERROR {process.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(lines[-1][len(MARKER):])
            base = base or row
            row.update(time_ratio=row["time_s"] / base["time_s"], memory_ratio=row["extra_mib"] / max(base["extra_mib"], 1e-9))
            rows.append(row)
            print(f"{size:5d} {name:15s} {row['time_s']:8.2f} {row['time_ratio']:7.1f} {row['extra_mib']:10.0f} "
                  f"{row['memory_ratio']:7.1f} {100 * row['busy']:4.0f}%", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
