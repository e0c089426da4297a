"""One-shot CUDA check: exactness on the GPU, AMP, timings and memory, and the CLI with --device cuda.

    python benchmarks/gpu_check.py --out results/            # needs a CUDA device

Prints a summary and writes ``gpu_check.json``. Exactness is checked in float32 with TF32
off (TF32 would change the reference and ours differently); timings use CUDA events after a
warm-up, the median of ``--repeats``; memory is ``max_memory_allocated`` minus what was
allocated before the measurement (the input and the network).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esegeta_monai import Explainer  # noqa: E402
from esegeta_monai.explainer import predict  # noqa: E402
from esegeta_monai.core.targets import ArgmaxRegion, MaskRegion  # noqa: E402


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def exactness(device):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, act="relu", norm="batch").eval().to(device)
    x = torch.rand(1, 1, 80, 72, 88, device=device)
    roi, windows = (48, 48, 48), dict(roi_size=(48, 48, 48), overlap=0.5, mode="gaussian", sw_batch_size=4)
    results = {}
    for target in (ArgmaxRegion(1), MaskRegion(2, box=[(10, 60), (0, 72), (20, 70)])):
        explainer = Explainer(net, "saliency", target, abs=False, **windows)
        ours = explainer(x)
        weights = target.weights(explainer.predict(x))

        def value(inputs):
            y = sliding_window_inference(inputs, roi, 4, net, overlap=0.5, mode="gaussian")
            return (y * weights.repeat(inputs.shape[0], 1, 1, 1, 1)).flatten(1).sum(1)

        probe = x.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(value(probe).sum(), probe)
        results[f"saliency_{target.name}_relerr"] = relative_error(ours, reference)
        ig = Explainer(net, "integrated_gradients", target, n_steps=8, **windows)(x)
        results[f"ig8_{target.name}_relerr"] = relative_error(ig, IntegratedGradients(value).attribute(x, n_steps=8))
    exact = Explainer(net, "saliency", ArgmaxRegion(1), **windows)(x)
    mixed = Explainer(net, "saliency", ArgmaxRegion(1), amp=True, **windows)(x)
    results["amp_fp16_dtype"] = str(mixed.dtype)
    results["amp_fp16_finite"] = bool(torch.isfinite(mixed).all())
    results["amp_fp16_corr"] = float(torch.corrcoef(torch.stack([exact.flatten(), mixed.flatten()]))[0, 1])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return results


def timed(fn, device, repeats):
    fn()  # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize(device)
    times, peaks = [], []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        peaks.append((torch.cuda.max_memory_allocated(device) - before) / 2**20)
    return statistics.median(times), max(peaks)


def timings(device, sizes, repeats, sw_batch_size):
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2, act="relu", norm="batch").eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    rows = []
    for size in sizes:
        x = torch.rand(1, 1, size, size, size, device=device)
        win = dict(roi_size=(64, 64, 64), overlap=0.25, mode="gaussian", sw_batch_size=sw_batch_size)
        whole = MaskRegion(1, box=[(0, size)] * 3)
        argmax = ArgmaxRegion(1)

        def autograd_swi():
            weights = argmax.weights(predict(net, x, **win))
            probe = x.clone().requires_grad_(True)
            y = sliding_window_inference(probe, (64, 64, 64), sw_batch_size, net, overlap=0.25, mode="gaussian")
            torch.autograd.grad((y * weights).sum(), probe)

        cases = {
            "inference": lambda: predict(net, x, **win),
            "inference_amp": lambda: predict(net, x, amp=True, **win),
            "saliency_mask": lambda: Explainer(net, "saliency", whole, **win)(x),
            "saliency_mask_amp": lambda: Explainer(net, "saliency", whole, amp=True, **win)(x),
            "saliency_argmax": lambda: Explainer(net, "saliency", argmax, **win)(x),
            "autograd_swi": autograd_swi,
            "ig16": lambda: Explainer(net, "integrated_gradients", whole, n_steps=16, internal_batch_size=16, **win)(x),
            "ig16_amp": lambda: Explainer(net, "integrated_gradients", whole, n_steps=16, internal_batch_size=16, amp=True, **win)(x),
        }
        base = None
        for name, fn in cases.items():
            try:
                seconds, extra_mib = timed(fn, device, repeats)
            except torch.cuda.OutOfMemoryError as error:
                rows.append({"size": size, "case": name, "error": f"OOM: {error}"})
                torch.cuda.empty_cache()
                continue
            base = seconds if name == "inference" else base
            rows.append({"size": size, "case": name, "seconds": round(seconds, 4), "extra_mib": round(extra_mib, 1),
                         "x_inference": round(seconds / base, 2) if base else None})
            print(f"{size}^3 sw{sw_batch_size} {name:18s} {seconds:8.4f}s  extra {extra_mib:8.1f} MiB  {seconds / base:6.2f}x inference", flush=True)
        torch.cuda.empty_cache()
    return rows


def cli_check(out: Path):
    target = out / "cli"
    command = [sys.executable, "-m", "esegeta_monai", "-q", "explain", "--bundle", "bundles/vessel_mra_demo", "--device", "cuda",
               "--amp", "--out", str(target), "--methods", "saliency,integrated_gradients,smoothgrad,deeplift,guided_backprop",
               "--target", "argmax:1", "--target", "otsu:1"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    result = {"returncode": completed.returncode, "seconds": round(time.perf_counter() - started, 2), "stderr_tail": completed.stderr[-1500:]}
    manifest = target / "manifest.json"
    if manifest.exists():
        import nibabel as nib
        import numpy as np

        records = json.loads(manifest.read_text())["records"]
        result["records"] = [(r["method"], r["target"], r["status"], r["seconds"], r["error"]) for r in records]
        source = nib.load("bundles/vessel_mra_demo/sample/vessel_phantom_0.nii.gz")
        aligned = []
        for r in records:
            if r["output"]:
                written = nib.load(r["output"])
                aligned.append(written.shape == source.shape and bool(np.allclose(written.affine, source.affine, atol=1e-4))
                               and bool(np.isfinite(written.get_fdata()).all()))
        result["all_aligned_and_finite"] = all(aligned) and bool(aligned)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gpu_results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    import captum
    import monai

    report.update(monai=monai.__version__, captum=captum.__version__)
    print(report, flush=True)
    report["exactness"] = exactness(device)
    print(json.dumps(report["exactness"], indent=1), flush=True)
    report["timings_sw2"] = timings(device, args.sizes, args.repeats, 2)
    report["timings_sw8"] = timings(device, args.sizes[:1], args.repeats, 8)
    report["cli"] = cli_check(Path(tempfile.mkdtemp(prefix="esegeta_gpu_cli_")))  # maps stay out of --out
    print(json.dumps(report["cli"], indent=1), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
