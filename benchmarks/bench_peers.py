#!/usr/bin/env python
"""Side-by-side benchmark against the libraries a user may explain with today: Captum,
MONAI ``monai.visualize``, pytorch-grad-cam and M3d-CAM (``medcam``).

Usage::

    python benchmarks/bench_peers.py --markdown peers.md        # the full table (see docs/benchmarks.md)
    python benchmarks/bench_peers.py --quick                     # small sizes, a few minutes
    python benchmarks/bench_peers.py --only sal3d_whole gradcam2d_b8 --rounds 5 --out peers.json

Every row is one setup — the same model, input, target and settings for every tool — run in a
fresh process (one thread by default) that builds each tool once, warms each up with one call,
then times ``--rounds`` interleaved rounds (tool A, B, C, A, B, C, …) and reports medians.
Memory is the extra peak resident memory of one call (bench_engine's ``RssPeak``: VmHWM reset
before the call, after ``malloc_trim``); contention is the CPU share other processes used
during the row (bench_engine's ``Contention``; rows disturbed by more than ``--busy-threshold``
are re-run once, keeping the quieter attempt). Agreement is the Pearson correlation of each
peer's map with ours after undoing the peer's normalisation (MONAI's CAM normaliser maps
(min, max) to (1, 0): its map is compared as ``1 − map``), on ours' grid (a peer map on another
grid is resized linearly), and ``max|Δ|`` of the two maps min–max normalised per image.

Setups (``--size``/``--roi`` for 3D, default 96³ volume, 64³ windows; ``--size2d`` default 224²):

- 3D: random MONAI ``UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2, relu, batch norm)``,
  target = the class-1 logits summed over the volume (ours: ``MaskRegion(1, ones)``; Captum: the
  same sum as forward function; MONAI/M3d-CAM: their class index 1, which sums the same logits);
  saliency, Grad-CAM at a mid and a late layer, occlusion (patch = size/4, stride = patch,
  4 perturbations per evaluation) — on the whole volume and through sliding windows (overlap
  0.25, gaussian, 2 windows per batch; Captum through MONAI's ``sliding_window_inference``).
- 2D: random MONAI ``DenseNet121(2, 1, 3)``, class 1 of a batch of 1 and of 8: saliency (absolute
  gradient) and Grad-CAM at ``class_layers.relu``.

A peer that cannot be imported on the installed torch is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Contention, RssPeak, machine_info  # noqa: E402  (the same meters as the engine benchmark)

MARKER = "@@PEERS@@ "
MIB = 1024.0 * 1024.0
ROWS = ("sal3d_whole", "sal3d_windows", "gradcam3d_mid", "gradcam3d_late", "gradcam3d_windows", "occlusion3d_whole",
        "occlusion3d_windows", "sal2d_b1", "sal2d_b8", "gradcam2d_b1", "gradcam2d_b8")
LAYERS_3D = {"mid": "model.1.submodule.1.submodule.0", "late": "model.1.submodule.2"}
LAYER_2D = "class_layers.relu"
OVERLAP, SW_BATCH, PER_EVAL = 0.25, 2, 4


def peer_status() -> dict[str, str]:
    """Why each optional peer cannot be used here ("" when it imports)."""
    status = {}
    for name, module in (("pytorch-grad-cam", "pytorch_grad_cam"), ("M3d-CAM", "medcam")):
        try:
            __import__(module)
            status[name] = ""
        except Exception as error:  # noqa: BLE001 - any import failure is reported
            status[name] = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    return status


# ---------------------------------------------------------------------------------------
# one row, in a fresh process
# ---------------------------------------------------------------------------------------
def build_row(row: str, args):
    """``(tools, x)``: tool name -> a call returning the map, and the input."""
    import torch
    from monai.inferers import sliding_window_inference

    from esegeta_monai import Explainer
    from esegeta_monai.core.targets import ClassScore, MaskRegion

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    tools = {}
    if row.endswith("_b1") or row.endswith("_b8"):
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
        batch = 1 if row.endswith("_b1") else 8
        x = torch.randn((batch, 1, args.size2d, args.size2d), generator=generator)
        score = lambda inputs: net(inputs)[:, 1]  # noqa: E731
        target = ClassScore(1)
        roi = None
    else:
        from monai.networks.nets import UNet

        net = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, act="relu", norm="batch").eval()
        x = torch.randn((1, 1, *(args.size,) * 3), generator=generator)
        target = MaskRegion(1, torch.ones(x.shape[2:]))
        roi = (args.roi,) * 3 if row.endswith("_windows") else None
        if roi:
            score = lambda inputs: sliding_window_inference(inputs, roi, SW_BATCH, net, overlap=OVERLAP, mode="gaussian")[:, 1].flatten(1).sum(1)  # noqa: E731
        else:
            score = lambda inputs: net(inputs)[:, 1].flatten(1).sum(1)  # noqa: E731
    windows = dict(roi_size=roi, overlap=OVERLAP, mode="gaussian", sw_batch_size=SW_BATCH) if roi else {}
    mode = "bilinear" if x.ndim == 4 else "trilinear"

    def frozen(call):
        def run():
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            return call()
        return run

    if row.startswith("sal"):
        from captum.attr import Saliency

        ours = Explainer(net, "saliency", target, **windows)
        tools["ours"] = lambda: ours(x)
        captum = Saliency(lambda inputs: score(inputs))
        tools["Captum"] = frozen(lambda: captum.attribute(x.clone(), abs=True))
        if x.ndim == 4:
            from monai.visualize import VanillaGrad

            monai_grad = VanillaGrad(net)
            tools["MONAI"] = lambda: monai_grad(x.clone(), index=1).abs()
    elif row.startswith("gradcam"):
        from captum.attr import LayerAttribution, LayerGradCam
        from monai.visualize import GradCAM

        layer = LAYER_2D if x.ndim == 4 else LAYERS_3D["late" if row.endswith("late") else "mid"]
        module = dict(net.named_modules())[layer]
        ours = Explainer(net, "gradcam", target, layer=layer, **windows)
        tools["ours"] = lambda: ours(x)
        captum = LayerGradCam(lambda inputs: score(inputs), module)
        tools["Captum"] = frozen(lambda: LayerAttribution.interpolate(captum.attribute(x.clone(), relu_attributions=True),
                                                                       tuple(x.shape[2:]), mode))
        if not roi:  # MONAI's and M3d-CAM's CAMs have no sliding windows
            monai_cam = GradCAM(net, target_layers=layer)

            def monai_run():
                for parameter in net.parameters():  # MONAI backpropagates into the parameters (its hooks need it)
                    parameter.requires_grad_(True)
                return 1 - monai_cam(x.clone(), class_idx=1)  # undo its flipping normaliser

            tools["MONAI"] = monai_run
            if not peer_status()["M3d-CAM"]:
                import copy

                from medcam import medcam

                injected = medcam.inject(copy.deepcopy(net), backend="gcam", layer=layer, label=1, replace=True)
                tools["M3d-CAM"] = frozen(lambda: injected(x.clone()))
    elif row.startswith("occlusion"):
        from captum.attr import Occlusion

        patch = (args.size // 4,) * 3
        ours = Explainer(net, "occlusion", target, sliding_window_shapes=patch, perturbations_per_eval=PER_EVAL, **windows)
        tools["ours"] = lambda: ours(x)
        captum = Occlusion(lambda inputs: score(inputs))
        tools["Captum"] = frozen(lambda: captum.attribute(x.clone(), sliding_window_shapes=(1, *patch), strides=(1, *patch),
                                                          baselines=0.0, perturbations_per_eval=PER_EVAL))
        if not roi:
            from monai.visualize import OcclusionSensitivity

            class Score(torch.nn.Module):  # MONAI explains a classifier: the summed class-1 logits as a 1-class output
                def forward(self, inputs):
                    return score(inputs)[:, None]

            monai_occ = OcclusionSensitivity(Score(), mask_size=patch, n_batch=PER_EVAL, overlap=0.0, mode=0.0, activate=False)
            tools["MONAI"] = frozen(lambda: -monai_occ(x.clone())[0][:, :1])  # its map is the occluded score: negate to a drop
    else:
        raise SystemExit(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    return tools, x


def agreement(ours, peer) -> dict:
    import torch
    import torch.nn.functional as F

    ours, peer = ours.detach().float(), peer.detach().float()
    if peer.ndim == ours.ndim - 1:
        peer = peer[:, None]
    peer = peer[:, :1]
    if tuple(peer.shape[2:]) != tuple(ours.shape[2:]):
        peer = F.interpolate(peer, size=tuple(ours.shape[2:]), mode="bilinear" if ours.ndim == 4 else "trilinear", align_corners=False)
    a, b = ours.flatten(1).double(), peer.flatten(1).double()
    a0, b0 = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a0 * b0).sum(1) / (a0.norm(dim=1) * b0.norm(dim=1)).clamp_min(1e-30)

    def mm(t):
        low, high = t.min(1, keepdim=True).values, t.max(1, keepdim=True).values
        return (t - low) / (high - low).clamp_min(1e-30)

    return {"pearson": float(r.min()), "max_abs_diff_minmax": float((mm(a) - mm(b)).abs().max())}


def measure_row(row: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    tools, x = build_row(row, args)
    maps, failed = {}, {}
    for name, call in list(tools.items()):  # warm-up, and the maps compared; a peer that fails is reported
        try:
            maps[name] = call()
        except Exception as error:  # noqa: BLE001
            if name == "ours":
                raise
            failed[name] = f"{type(error).__name__}: {error}".splitlines()[0][:160]
            del tools[name]
    times: dict[str, list[float]] = {name: [] for name in tools}
    extras: dict[str, list[float]] = {name: [] for name in tools}
    with Contention() as contention:
        names = list(tools)
        for round_ in range(args.rounds):  # each round starts with the next tool: every tool takes every place
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                call = tools[name]
                gc.collect()
                with RssPeak() as meter:
                    start = time.perf_counter()
                    result = call()
                    times[name].append(time.perf_counter() - start)
                extras[name].append(meter.extra / MIB)
                del result
    results = {}
    for name in tools:
        results[name] = {"time_s": statistics.median(times[name]), "times_s": times[name], "extra_mib": statistics.median(extras[name])}
        if name != "ours":
            results[name].update(agreement(maps["ours"], maps[name]))
    return {"row": row, "shape": list(x.shape), "threads": torch.get_num_threads(), "rounds": args.rounds,
            "contention": contention.foreign + contention.stolen, "tools": results, "failed": failed}


# ---------------------------------------------------------------------------------------
# orchestration and the table
# ---------------------------------------------------------------------------------------
def run_child(row: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", row, "--rounds", str(args.rounds),
               "--threads", str(args.threads), "--size", str(args.size), "--roi", str(args.roi), "--size2d", str(args.size2d)]
    process = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-8:])
        return {"row": row, "error": f"exit code {process.returncode}: {tail}"}
    return json.loads(lines[-1][len(MARKER):])


def markdown(results: list[dict], args, machine: dict, status: dict, wall: float) -> str:
    lines = [f"Command: `python benchmarks/bench_peers.py {' '.join(args.argv)}` — {wall / 60:.1f} min; "
             f"{machine['nproc']} cpu(s) ({machine['cpu_model']}), {args.threads} thread(s), {args.rounds} interleaved rounds, medians; "
             f"3D {args.size}³ (windows {args.roi}³), 2D {args.size2d}².", ""]
    for name, why in status.items():
        if why:
            lines.append(f"- {name} not measured: cannot be imported here ({why}).")
    lines += ["", "| setup | tool | time s | × ours | extra MiB | × ours | agreement r | max\\|Δ\\| (min–max) | busy |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in results:
        if "error" in entry:
            lines.append(f"| {entry['row']} | CRASHED | {entry['error'].splitlines()[-1][:120]} | | | | | | |")
            continue
        ours = entry["tools"]["ours"]
        for name, m in entry["tools"].items():
            agree = "" if name == "ours" else f"{m['pearson']:.4f}"
            delta = "" if name == "ours" else f"{m['max_abs_diff_minmax']:.1e}"
            lines.append(f"| {entry['row']} | {name} | {m['time_s']:.2f} | {m['time_s'] / ours['time_s']:.2f} | {m['extra_mib']:.0f} | "
                         f"{m['extra_mib'] / max(ours['extra_mib'], 1e-9):.2f} | {agree} | {delta} | {100 * entry['contention']:.0f}% |")
        for name, why in entry.get("failed", {}).items():
            lines.append(f"| {entry['row']} | {name} | failed: {why.replace('|', '/')} | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=96, help="3D volume edge (default 96)")
    parser.add_argument("--roi", type=int, default=64, help="3D window edge (default 64)")
    parser.add_argument("--size2d", type=int, default=224, help="2D image edge (default 224)")
    parser.add_argument("--quick", action="store_true", help="3D 48³ with 32³ windows, 2D 96², 2 rounds: a few minutes")
    parser.add_argument("--busy-threshold", type=float, default=0.10)
    parser.add_argument("--markdown", type=Path, help="write the table as markdown here")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--measure", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.size, args.roi, args.size2d, args.rounds = 48, 32, 96, min(args.rounds, 2)
    if args.measure:
        print(MARKER + json.dumps(measure_row(args.measure, args)), flush=True)
        return 0
    machine, status = machine_info(), peer_status()
    for name, why in status.items():
        if why:
            print(f"{name}: not measured ({why})", flush=True)
    start, results = time.perf_counter(), []
    for row in args.only:
        print(f"  {row} ...", end=" ", flush=True)
        entry = run_child(row, args)
        if "error" not in entry and entry["contention"] > args.busy_threshold:
            again = run_child(row, args)
            entry = min((entry, again), key=lambda e: e.get("contention", 1.0))
        results.append(entry)
        print(entry.get("error") or " ".join(f"{n} {m['time_s']:.2f}s/{m['extra_mib']:.0f}MiB" for n, m in entry["tools"].items()),
              f"(busy {100 * entry.get('contention', 0):.0f}%)", flush=True)
    table = markdown(results, args, machine, status, time.perf_counter() - start)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "peers": status, "results": results}, indent=2))
    return 1 if any("error" in e for e in results) else 0


if __name__ == "__main__":
    sys.exit(main())
