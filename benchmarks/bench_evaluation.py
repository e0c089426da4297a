#!/usr/bin/env python
"""Time and peak memory of the evaluation metrics through sliding windows.

Two benchmarks:

- the default: infidelity and sensitivity on synthetic 3D volumes against one sliding-window
  inference of the same volume (settings below);
- ``--catalogue``: every metric of the catalogue with its default options on the shipped demo
  bundle (``bundles/vessel_mra_demo``: its sample 96×96×64 and label, its 64³ windows, target
  ``argmax:1``, saliency) against one map of the same image: time, the network's window forwards
  (counted by a forward hook, batch elements) and extra peak memory, each in a fresh process;
  with ``--draws N`` also each drawing metric at ``n_samples`` N and 4·N, so the memory ratio
  shows whether memory stays flat in the number of draws.

Usage::

    python benchmarks/bench_evaluation.py                 # 96³ and 160³
    python benchmarks/bench_evaluation.py --sizes 128 --out results.json
    python benchmarks/bench_evaluation.py --catalogue --draws 4 --out catalogue.json

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


DEMO = HERE.parent / "bundles" / "vessel_mra_demo"


def measure_metric(name: str, threads: int, n_samples: int | None) -> dict:
    """One metric of the catalogue (or ``map``: the saliency map alone) on the demo bundle's sample."""
    import torch

    from esegeta_monai import Explainer
    from esegeta_monai.apps.allocator import tune_allocator
    from esegeta_monai.evaluation import METRICS, MetricCase, metric_options
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation
    from esegeta_monai.monai.io.masks import load_label_values_like

    tune_allocator()
    torch.set_num_threads(threads)
    bundle = load_bundle(DEMO)
    image = bundle.samples[0]
    data = load_for_explanation(image, bundle.preprocessing, bundle.image_key, expected_channels=bundle.in_channels,
                                expected_spatial_dims=bundle.spatial_dims)
    x = data[bundle.image_key][None].as_tensor()
    label = load_label_values_like(Path(str(image).replace(".nii.gz", "_label.nii.gz")), data[bundle.image_key])
    explainer = Explainer(bundle.network, "saliency", "argmax:1", **bundle.window.as_dict())
    windows = [0]
    bundle.network.register_forward_hook(lambda module, args, output: windows.__setitem__(0, windows[0] + args[0].shape[0]))
    attribution = explainer(x)  # also the warm-up
    options = {} if name == "map" else metric_options(name, {"n_samples": n_samples} if n_samples else {})
    windows[0] = 0
    with Contention() as load, RssPeak() as peak:
        start = time.perf_counter()
        if name == "map":
            explainer(x)
            status = "ok"
        else:
            result = METRICS[name].compute(MetricCase(explainer, x, attribution, label, seed=0), options)
            status = result.status or "ok"
        seconds = time.perf_counter() - start
    return {"name": name, "time_s": seconds, "window_forwards": windows[0], "extra_mib": peak.extra / MIB,
            "busy": load.foreign + load.stolen, "options": options, "status": status, "shape": list(x.shape[2:])}


def _run(arguments: list[str]) -> dict | str:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    process = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode or not lines:
        return f"ERROR {process.stderr.strip().splitlines()[-1:]}"
    return json.loads(lines[-1][len(MARKER):])


def catalogue(metrics, threads: int, draws: int | None) -> list[dict]:
    """Each metric against one map, in fresh processes (``draws``: drawing metrics at N and 4·N too)."""
    from esegeta_monai.evaluation import METRICS

    rows, base = [], None
    print(f"{'metric':28s} {'time s':>8} {'× map':>7} {'windows':>8} {'extra MiB':>10} {'× map':>7} {'busy':>5}")
    runs = [("map", None)] + [(m, None) for m in metrics]
    if draws:
        runs += [(m, n) for m in metrics if "n_samples" in METRICS[m].options for n in (draws, 4 * draws)]
    for name, n in runs:
        row = _run(["--measure-metric", name, "--threads", str(threads)] + (["--n-samples", str(n)] if n else []))
        label = name + (f" n_samples={n}" if n else "")
        if isinstance(row, str):
            print(f"{label:28s} {row}")
            continue
        base = base or row
        row.update(label=label, time_ratio=row["time_s"] / base["time_s"], memory_ratio=row["extra_mib"] / max(base["extra_mib"], 1e-9))
        rows.append(row)
        print(f"{label:28s} {row['time_s']:8.2f} {row['time_ratio']:7.1f} {row['window_forwards']:8d} {row['extra_mib']:10.0f} "
              f"{row['memory_ratio']:7.1f} {100 * row['busy']:4.0f}%", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out")
    parser.add_argument("--catalogue", action="store_true", help="every catalogue metric on the demo bundle against one map")
    parser.add_argument("--metrics", help="--catalogue: comma-separated metrics (default: all)")
    parser.add_argument("--draws", type=int, help="--catalogue: also each drawing metric at n_samples N and 4·N (memory flat in draws)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-metric", help=argparse.SUPPRESS)
    parser.add_argument("--n-samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(MARKER + json.dumps(measure(args.measure, args.size, args.threads)), flush=True)
        return 0
    if args.measure_metric:
        print(MARKER + json.dumps(measure_metric(args.measure_metric, args.threads, args.n_samples)), flush=True)
        return 0
    if args.catalogue:
        from esegeta_monai.evaluation import METRICS

        metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else list(METRICS)
        rows = catalogue(metrics, args.threads, args.draws)
        if args.out:
            Path(args.out).write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "rows": rows}, indent=2))
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
