#!/usr/bin/env python
"""Time and peak memory of every registered method on the demo bundle's sample volume, as
multiples of one sliding-window inference measured in the same run.

Usage::

    python benchmarks/bench_methods.py                    # every method, its default keywords
    python benchmarks/bench_methods.py --methods saliency gradcam --repeats 3
    python benchmarks/bench_methods.py --quick            # cheap keywords (4 steps/samples): a smoke run
    python benchmarks/bench_methods.py --out results.json

Setting: ``bundles/vessel_mra_demo`` (3D UNet 8-16-32-64, 151 k parameters), its sample
through the bundle's preprocessing (77³ voxels at 1 mm), the bundle's inferer (roi 64³,
overlap 0.25, gaussian, sw_batch_size 2: 8 windows), target ``argmax:1`` (the prediction pass
is included in every method's time, as the CLI runs it). CAM and layer methods use the layer
``model.1.submodule.1.submodule.0`` (deepest encoder block); contrastive excitation backprop
contrasts at ``model.1.submodule.1.submodule.1``.

Each measurement runs in a fresh process (this script with ``--measure NAME``) after a
warm-up call identical to the measured one, so one-time costs are excluded. Time: median
of ``--repeats`` calls. Memory: extra peak resident memory of the call (VmHWM reset before it;
see ``bench_engine.py``), or ``torch.cuda.max_memory_allocated`` on CUDA. Baseline:
``inference``, MONAI ``sliding_window_inference`` under ``no_grad`` on the same volume.
Contention from other processes is recorded per measurement (``busy``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_engine import MARKER, MIB, Contention, CudaPeak, RssPeak, machine_info  # noqa: E402

DEMO = ROOT / "bundles" / "vessel_mra_demo"
LAYER = "model.1.submodule.1.submodule.0"
CONTRAST = "model.1.submodule.1.submodule.1"
CHEAP = {"n_steps": 4, "nt_samples": 4, "n_samples": 4}


def method_options(name: str, quick: bool) -> dict:
    """The keywords a method is benchmarked with: its defaults, plus a layer where it needs one."""
    from esegeta_monai.methods import get_method

    params = get_method(name).params
    options = {k: v for k, v in CHEAP.items() if k in params} if quick else {}
    if "layer" in params:
        options["layer"] = LAYER
    if "contrast_layer" in params:
        options.update(layer=None, contrast_layer=CONTRAST)
    return options


def measure(name: str, repeats: int, device_name: str, threads: int, quick: bool) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from esegeta_monai import Explainer
    from esegeta_monai.apps.allocator import tune_allocator
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation

    tune_allocator()
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    bundle = load_bundle(DEMO, device=device)
    window = {k: v for k, v in bundle.inferer.items() if v is not None}
    x = load_for_explanation(bundle.samples[0], bundle.preprocessing)["image"][None].as_tensor().to(device)
    roi = window["roi_size"]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if name == "inference":
        def call(volume):
            with torch.no_grad():
                return sliding_window_inference(volume, roi, window["sw_batch_size"], bundle.network, overlap=window["overlap"],
                                                mode=window["mode"])
    else:
        explainer = Explainer(bundle.network, name, "argmax:1", **window, **method_options(name, quick))

        def call(volume):
            return explainer(volume)

    call(x)  # warm-up: the same call, so one-time costs (oneDNN primitives per batch shape, Captum set-up) are excluded
    sync()
    times, extras = [], []
    with Contention() as contention:
        for _ in range(repeats):
            peak = CudaPeak(torch, device) if device.type == "cuda" else RssPeak()
            with peak:
                start = time.perf_counter()
                call(x)
                sync()
                times.append(time.perf_counter() - start)
            extras.append(peak.extra)
    return {"name": name, "time_s": statistics.median(times), "times_s": times, "extra_mib": max(extras) / MIB,
            "contention": contention.foreign + contention.stolen, "volume": list(x.shape)}


def run_child(name: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", name, "--repeats", str(args.repeats),
               "--device", args.device, "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-8:])
        return {"name": name, "error": f"exit code {process.returncode}: {tail}"}
    return json.loads(lines[-1][len(MARKER):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", help="methods to measure (default: every registered method)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="cheap keywords: 4 steps / samples")
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(MARKER + json.dumps(measure(args.measure, args.repeats, args.device, args.threads, args.quick)), flush=True)
        return 0

    sys.path.insert(0, str(ROOT))
    from esegeta_monai.methods import available_methods, get_method

    names = args.methods or available_methods()
    baseline = run_child("inference", args)
    if "error" in baseline:
        print(baseline["error"], file=sys.stderr)
        return 1
    print(f"inference: {baseline['time_s']:.3f} s, {baseline['extra_mib']:.0f} MiB extra (volume {baseline['volume']}, "
          f"{args.device}, {args.threads} threads{', quick keywords' if args.quick else ''})")
    print(f"{'method':34s} {'family':9s} {'time s':>8s} {'× inf':>7s} {'MiB':>7s} {'× inf':>7s} {'busy':>5s}  keywords")
    rows, failed = [], 0
    for name in names:
        result = run_child(name, args)
        rows.append(result)
        if "error" in result:
            failed += 1
            print(f"{name:34s} ERROR {result['error']}")
            continue
        result["time_ratio"] = result["time_s"] / baseline["time_s"]
        result["memory_ratio"] = result["extra_mib"] / max(baseline["extra_mib"], 1e-9)
        result["options"] = {k: v for k, v in method_options(name, args.quick).items() if k not in ("layer", "contrast_layer")}
        print(f"{name:34s} {get_method(name).family:9s} {result['time_s']:8.2f} {result['time_ratio']:7.1f} "
              f"{result['extra_mib']:7.0f} {result['memory_ratio']:7.1f} {100 * result['contention']:4.0f}%  {result['options'] or ''}",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "baseline": baseline, "methods": rows,
                                              "quick": args.quick, "device": args.device}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
