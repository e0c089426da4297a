#!/usr/bin/env python
"""Benchmark of the exact sliding-window attribution engine against MONAI inference and
against autograd straight through ``sliding_window_inference``.

Usage::

    python benchmarks/bench_engine.py                      # 128³ and 192³, the full run
    python benchmarks/bench_engine.py --sizes 128 192 --repeats 3 --out results.json
    python benchmarks/bench_engine.py --quick              # 96³ smoke check
    python benchmarks/bench_engine.py --device cuda        # on a GPU (memory: max_memory_allocated)

Model: ``monai.networks.nets.UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
num_res_units=2, act="relu", norm="batch")``, seeded random weights, eval mode; a seeded
random ``(1, 1, S, S, S)`` input; sliding windows ``roi 64³, overlap 0.25, mode gaussian,
sw_batch_size 2``.

Measurements (each in its own fresh process — this script re-run with the hidden
``--measure NAME --size S`` — so that peak memory is per measurement):

``inference``        MONAI ``sliding_window_inference`` under ``torch.no_grad()`` (baseline).
``windows_fwd_bwd``  reference, not a target: the network's bare forward + backward (input
                     gradient, frozen parameters) on the same window batches, with no target,
                     weighting, Captum or stitching — the floor of any exact saliency.
``saliency_mask``    ``Explainer(net, "saliency", MaskRegion(1, ones))``: the mask is the whole
                     volume, so no window is skipped.
``saliency_argmax``  the same with ``ArgmaxRegion(1)`` (includes the no-grad prediction pass).
``autograd_swi``     the naive approach for the same ArgmaxRegion target: a no-grad prediction
                     for the mask, then ``torch.autograd.grad((swi(x) * G).sum(), x)`` with the
                     parameters frozen.
``ig16``             ``Explainer(net, "integrated_gradients", MaskRegion whole volume,
                     n_steps=16, internal_batch_size=4)``: Captum then runs 2 steps × 2 windows
                     = 4 windows per forward.

Timing: median wall time of ``--repeats`` runs (defaults: 3 for inference and the two
saliencies, 1 for autograd_swi and ig16), after a warm-up of the same call on one window
(a roi-sized volume) plus one forward/backward of the network at each window-batch size
the measurement uses, so one-time costs (imports, oneDNN primitive creation, Captum
set-up) are excluded.

Memory (CPU): EXTRA peak resident memory = peak RSS during the measurement minus RSS just
before it. Before each timed run the script collects garbage, calls glibc ``malloc_trim(0)``
(so freed warm-up memory is returned to the OS and does not hide the measurement's own
allocations), reads ``VmRSS`` from ``/proc/self/status`` and resets the kernel's high-water
mark ``VmHWM`` by writing ``5`` to ``/proc/self/clear_refs``; after the run it reads
``VmHWM``. This is exact (the kernel tracks the peak) and independent of setup allocations,
unlike ``ru_maxrss`` (a lifetime peak), which is also recorded for reference. Where
``clear_refs`` is not writable, a background thread samples ``VmRSS`` every 5 ms instead.
The reported value is the largest over the repeats. On CUDA: ``torch.cuda.max_memory_allocated``
minus ``memory_allocated`` before, after ``reset_peak_memory_stats``; timings synchronise.

Contention: the script is meant for shared machines. Each measurement records the CPU time
that OTHER processes used while it ran (machine busy time from ``/proc/stat`` minus this
process's own CPU time, plus hypervisor steal), as a fraction of the machine's capacity
(the ``busy`` column). Before each measurement the parent waits (``--wait-quiet``, default
120 s) until the machine is quiet, and a measurement disturbed by more than
``--busy-threshold`` (default 10 %) is re-run (``--retries``, default 2), keeping the least
disturbed attempt. Per-repeat user/sys CPU time and minor page faults are recorded in the JSON.

Every measurement process calls ``torch.set_num_threads(--threads)`` (default
``os.cpu_count()``) and, like the ``esegeta`` command, ``esegeta_monai.apps.allocator.tune_allocator()``
(freed tensor buffers stay in glibc's heap instead of being unmapped and page-faulted back
in at every window batch); ``--default-malloc`` measures with glibc's defaults. Results are printed as a table with ratios against ``inference`` of the
same size from the same run, with PASS/FAIL against the project's targets (informative:
the script exits non-zero only when a measurement crashes), and written as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MEASUREMENTS = ("inference", "windows_fwd_bwd", "saliency_mask", "saliency_argmax", "autograd_swi", "ig16")
DEFAULT_REPEATS = {"inference": 3, "windows_fwd_bwd": 3, "saliency_mask": 3, "saliency_argmax": 3, "autograd_swi": 1, "ig16": 1}
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ROI = 64
OVERLAP = 0.25
MODE = "gaussian"
SW_BATCH = 2
IG_INTERNAL_BATCH = 4
MARKER = "@@BENCH_RESULT@@ "
MIB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------
# memory helpers (no psutil)
# ---------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class RssPeak:
    """Extra peak RSS (bytes) of the code run inside the ``with`` block."""

    def __init__(self):
        self.method = ""
        self.before = self.peak = 0
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        self.before = _status_kib("VmRSS") * 1024
        if _reset_hwm():
            self.method = "VmHWM reset via /proc/self/clear_refs"
        else:
            self.method = "VmRSS sampled every 5 ms"
            self._samples = [self.before]
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._samples.append(_status_kib("VmRSS") * 1024)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(max(self._samples), _status_kib("VmRSS") * 1024)
        else:
            self.peak = _status_kib("VmHWM") * 1024
        return False

    @property
    def extra(self) -> int:
        return max(self.peak - self.before, 0)


class CudaPeak:
    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self.method = "torch.cuda.max_memory_allocated - memory_allocated before"

    def __enter__(self):
        gc.collect()
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        self.before = self.torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        self.torch.cuda.synchronize(self.device)
        self.peak = self.torch.cuda.max_memory_allocated(self.device)
        return False

    @property
    def extra(self) -> int:
        return max(self.peak - self.before, 0)


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class Contention:
    """CPU time used by OTHER processes (and stolen by the hypervisor) during a block, as a
    fraction of the machine's capacity (wall time × cpus): the benchmark's own CPU time is
    subtracted from the machine's busy time in /proc/stat."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.busy, self.steal = _proc_stat()
        times = os.times()
        self.own = times.user + times.system
        return self

    def __exit__(self, *exc):
        wall = max(time.perf_counter() - self.start, 1e-9)
        busy, steal = _proc_stat()
        times = os.times()
        own = times.user + times.system - self.own
        capacity = wall * (os.cpu_count() or 1)
        self.own_cpu_s = own
        self.foreign = max(busy - self.busy - own, 0.0) / capacity
        self.stolen = max(steal - self.steal, 0.0) / capacity
        return False


def wait_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    """Wait (≤ max_wait s) until the machine is busy < threshold of its capacity over one
    second; return (seconds waited, last busy fraction)."""
    start = time.perf_counter()
    busy = 0.0
    while True:
        with Contention() as probe:
            time.sleep(1.0)
        busy = probe.foreign + probe.stolen
        waited = time.perf_counter() - start
        if busy < threshold or waited >= max_wait:
            return waited, busy


# ---------------------------------------------------------------------------------------
# one measurement, in this (fresh) process
# ---------------------------------------------------------------------------------------
def measure(name: str, size: int, repeats: int, device_name: str, threads: int, ig_steps: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from esegeta_monai import Explainer
    from esegeta_monai.core.targets import ArgmaxRegion, MaskRegion

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, act="relu", norm="batch")
    net = net.to(device).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((1, 1, size, size, size), generator=generator).to(device)
    roi = (ROI,) * 3
    swi_kwargs = dict(overlap=OVERLAP, mode=MODE)
    explainer_kwargs = dict(roi_size=roi, overlap=OVERLAP, mode=MODE, sw_batch_size=SW_BATCH)
    info: dict = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def whole_mask(volume):
        return MaskRegion(1, torch.ones(volume.shape[2:], device=device))

    if name == "inference":

        def run(volume):
            with torch.no_grad():
                return sliding_window_inference(volume, roi, SW_BATCH, net, **swi_kwargs)

        batches, grad = (1, SW_BATCH), False

    elif name in ("saliency_mask", "saliency_argmax", "ig16"):
        method = "integrated_gradients" if name == "ig16" else "saliency"
        options = {"n_steps": ig_steps, "internal_batch_size": IG_INTERNAL_BATCH} if name == "ig16" else {}
        if name == "ig16":
            info.update(n_steps=ig_steps, internal_batch_size=IG_INTERNAL_BATCH)
        explainers = {}

        def run(volume):
            key = tuple(volume.shape)
            if key not in explainers:  # warm-up volume
                target = ArgmaxRegion(1) if name == "saliency_argmax" else whole_mask(volume)
                explainers[key] = Explainer(net, method, target, **explainer_kwargs, **options)
            result = explainers[key](volume)
            info["windows_run"] = explainers[key].last_pass.windows_run
            return result

        run_key = tuple(x.shape)  # build the timed explainer (and its mask) before timing
        explainers[run_key] = Explainer(
            net, method, ArgmaxRegion(1) if name == "saliency_argmax" else whole_mask(x), **explainer_kwargs, **options
        )

        batches = (1, SW_BATCH)
        if name == "ig16":  # Captum: internal_batch_size // window batch steps per forward
            batches = tuple(sorted({max(1, IG_INTERNAL_BATCH // b) * b for b in (1, SW_BATCH)}))
        grad = True

    elif name == "windows_fwd_bwd":  # reference: the network's forward+backward on the same
        from esegeta_monai.core.windows import plan_windows  # window batches, nothing else

        def run(volume):
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            slices = plan_windows(volume.shape[2:], roi, OVERLAP, MODE).slices
            gradients = []
            for start in range(0, len(slices), SW_BATCH):
                group = slices[start : start + SW_BATCH]
                window = torch.cat([volume[(slice(None), slice(None), *w)] for w in group]).requires_grad_(True)
                (gradient,) = torch.autograd.grad(net(window)[:, 1].sum(), window)
                gradients.append(float(gradient.abs().sum()))
            info["windows_run"] = len(slices)
            return torch.tensor(gradients)

        batches, grad = (1, SW_BATCH), True

    elif name == "autograd_swi":
        target = ArgmaxRegion(1)

        def run(volume):
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            with torch.no_grad():
                prediction = sliding_window_inference(volume, roi, SW_BATCH, net, **swi_kwargs)
                weights = target.weights(prediction)
            del prediction
            leaf = volume.detach().clone().requires_grad_(True)
            output = sliding_window_inference(leaf, roi, SW_BATCH, net, **swi_kwargs)
            (gradient,) = torch.autograd.grad((output * weights).sum(), leaf)
            return gradient.abs()  # saliency's default abs=True, for the checksum

        batches, grad = (1, SW_BATCH), True
    else:
        raise SystemExit(f"unknown measurement {name!r}; choose from {', '.join(MEASUREMENTS)}")

    # warm-up: the same call on one window, then the network at each window-batch size
    run(torch.randn((1, 1, *roi), generator=generator).to(device))
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    for batch in batches:
        window = torch.randn((batch, 1, *roi), generator=generator).to(device)
        if grad:
            window.requires_grad_(True)
            (net(window) * 1.0).sum().backward()
        else:
            with torch.no_grad():
                net(window)
    del window
    sync()

    times, extras, peaks = [], [], []
    load_before = os.getloadavg()
    checksum = None
    meter_method = ""
    foreign, stolen, own_cpu, rusage = [], [], [], []
    for _ in range(repeats):
        meter = CudaPeak(torch, device) if device.type == "cuda" else RssPeak()
        with meter, Contention() as contention:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            sync()
            start = time.perf_counter()
            result = run(x)
            sync()
            times.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
        rusage.append({"user_s": after.ru_utime - usage.ru_utime, "sys_s": after.ru_stime - usage.ru_stime,
                       "minor_faults": after.ru_minflt - usage.ru_minflt})
        foreign.append(contention.foreign)
        stolen.append(contention.stolen)
        own_cpu.append(contention.own_cpu_s)
        extras.append(meter.extra)
        peaks.append(meter.peak)
        meter_method = meter.method
        checksum = float(result.detach().double().abs().sum())
        if name == "inference":
            info["class1_fraction"] = float((result.argmax(1) == 1).double().mean())
        del result
    import captum
    import monai

    return {
        "name": name,
        "size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "times_s": times,
        "time_s": statistics.median(times),
        "extra_bytes_per_repeat": extras,
        "extra_bytes": max(extras),
        "extra_mib": max(extras) / MIB,
        "peak_bytes": max(peaks),
        "ru_maxrss_kib_lifetime": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "memory_method": meter_method,
        "own_cpu_s": own_cpu,
        "rusage": rusage,
        "foreign_cpu_fraction": foreign,
        "steal_fraction": stolen,
        "contention": max(f + st for f, st in zip(foreign, stolen)),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "checksum_abs_sum": checksum,
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "captum": captum.__version__},
        **info,
    }


# ---------------------------------------------------------------------------------------
# orchestration: one subprocess per (size, measurement)
# ---------------------------------------------------------------------------------------
def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def run_measurement(script: Path, name: str, size: int, args) -> dict:
    """Run one measurement in a fresh process; when other processes took more than
    ``--busy-threshold`` of the CPUs during it, run it again (``--retries``) and keep the
    least disturbed attempt."""
    attempts = []
    for _ in range(args.retries + 1):
        waited, busy = wait_quiet(args.wait_quiet, args.busy_threshold) if args.wait_quiet > 0 else (0.0, None)
        result = run_child(script, name, size, args)
        result.update(waited_for_quiet_s=waited, busy_before=busy)
        attempts.append(result)
        if "error" in result or result["contention"] <= args.busy_threshold:
            break
        print(f"[disturbed: other processes used {100 * result['contention']:.0f}% of the cpus, "
              f"{result['time_s']:.2f} s; again]", end=" ", flush=True)
    valid = [a for a in attempts if "error" not in a]
    best = min(valid, key=lambda a: a["contention"]) if valid else attempts[-1]
    best["attempts"] = [{k: a.get(k) for k in ("time_s", "extra_mib", "contention", "error")} for a in attempts]
    return best


def run_child(script: Path, name: str, size: int, args) -> dict:
    repeats = args.repeats if args.repeats is not None else DEFAULT_REPEATS[name]
    command = [
        sys.executable, str(script), "--measure", name, "--size", str(size), "--repeats", str(repeats),
        "--device", args.device, "--threads", str(args.threads), "--ig-steps", str(args.ig_steps),
    ]
    env = dict(os.environ)
    env["ESEGETA_MALLOC_TUNING"] = "0" if args.default_malloc else "1"
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
        return {"name": name, "size": size, "error": f"exit code {process.returncode}", "stderr_tail": tail}
    result = json.loads(lines[-1][len(MARKER):])
    result["process_wall_s"] = time.perf_counter() - start
    return result


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def analyse(results: dict, sizes: list[int], ig_steps: int) -> tuple[dict, list[dict]]:
    def get(size, name, field):
        entry = results.get(str(size), {}).get(name, {})
        return entry.get(field)

    ratios: dict = {}
    targets: list[dict] = []

    def check(label, value, limit, op):
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        targets.append({"target": label, "value": value, "limit": limit, "op": op,
                        "status": "N/A" if passed is None else ("PASS" if passed else "FAIL")})

    for size in sizes:
        r = {
            "saliency_mask/inference": ratio(get(size, "saliency_mask", "time_s"), get(size, "inference", "time_s")),
            "saliency_argmax/inference": ratio(get(size, "saliency_argmax", "time_s"), get(size, "inference", "time_s")),
            "autograd_swi/saliency_argmax (speed-up)": ratio(get(size, "autograd_swi", "time_s"), get(size, "saliency_argmax", "time_s")),
            "saliency_argmax mem/autograd_swi mem": ratio(get(size, "saliency_argmax", "extra_bytes"), get(size, "autograd_swi", "extra_bytes")),
            "saliency_mask mem/autograd_swi mem": ratio(get(size, "saliency_mask", "extra_bytes"), get(size, "autograd_swi", "extra_bytes")),
            "ig16/saliency_mask": ratio(get(size, "ig16", "time_s"), get(size, "saliency_mask", "time_s")),
            "windows_fwd_bwd/inference (network floor)": ratio(get(size, "windows_fwd_bwd", "time_s"), get(size, "inference", "time_s")),
            "saliency_mask/windows_fwd_bwd (engine overhead)": ratio(get(size, "saliency_mask", "time_s"), get(size, "windows_fwd_bwd", "time_s")),
        }
        ratios[str(size)] = r
        check(f"{size}³ saliency_mask ≤ 2.2× inference", r["saliency_mask/inference"], 2.2, "<=")
        check(f"{size}³ saliency_argmax ≤ 3.0× inference", r["saliency_argmax/inference"], 3.0, "<=")
    # the autograd and memory-scaling targets are defined at 192³ (and 128³): N/A without them
    r192 = ratios.get("192", {})
    check("192³ autograd_swi time ≥ 2× saliency_argmax", r192.get("autograd_swi/saliency_argmax (speed-up)"), 2.0, ">=")
    check("192³ saliency_argmax extra memory ≤ 0.2× autograd_swi's", r192.get("saliency_argmax mem/autograd_swi mem"), 0.2, "<=")
    for name in ("saliency_argmax", "saliency_mask"):
        value = ratio(get(192, name, "extra_bytes"), get(128, name, "extra_bytes"))
        ratios[f"{name} mem 192/128"] = value
        check(f"{name} extra memory 192³ ≤ 1.3× 128³", value, 1.3, "<=")
    limit = ig_steps + 1.0
    for size in sizes:
        check(f"{size}³ ig{ig_steps} ≤ {limit:g}× saliency_mask", ratios[str(size)]["ig16/saliency_mask"], limit, "<=")
    for size in sizes:  # exactness cross-check: Σ|∂T/∂x| of ours vs autograd
        a, b = get(size, "saliency_argmax", "checksum_abs_sum"), get(size, "autograd_swi", "checksum_abs_sum")
        ratios[str(size)]["checksum rel. diff (ours vs autograd)"] = None if a is None or not b else abs(a - b) / abs(b)
    return ratios, targets


def fmt(value, spec=".2f", suffix=""):
    return "—" if value is None else f"{value:{spec}}{suffix}"


def print_report(results, ratios, targets, sizes, machine, args):
    print()
    print(f"machine: {machine['nproc']} cpu(s), {machine['cpu_model']}; device {args.device}; threads {args.threads}"
          + ("; glibc default malloc" if args.default_malloc else "; allocator tuned (esegeta_monai.apps.allocator)"))
    versions = next((m["versions"] for s in results.values() for m in s.values() if "versions" in m), {})
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    header = f"{'size':>5} {'measurement':<16} {'time s':>9} {'×inf':>6} {'extra MiB':>10} {'×inf':>6} {'windows':>7} {'busy':>5}  notes"
    print(header)
    print("-" * len(header))
    for size in sizes:
        base = results[str(size)].get("inference", {})
        for name in MEASUREMENTS:
            m = results[str(size)].get(name)
            if m is None:
                continue
            if "error" in m:
                print(f"{size:>5} {name:<16} CRASHED: {m['error']}")
                continue
            windows = m.get("windows_run", "")
            load = f"{100 * m['contention']:.0f}%"
            notes = []
            if name == "ig16":
                notes.append(f"n_steps={m['n_steps']} internal_batch_size={m['internal_batch_size']}")
            if m["repeats"] > 1:
                notes.append("runs " + "/".join(f"{t:.2f}" for t in m["times_s"]))
            if len(m.get("attempts", [])) > 1:
                notes.append(f"{len(m['attempts'])} attempts")
            if name == "inference" and "class1_fraction" in m:
                notes.append(f"argmax==1 on {100 * m['class1_fraction']:.0f}% of voxels")
            print(
                f"{size:>5} {name:<16} {m['time_s']:>9.2f} {fmt(ratio(m['time_s'], base.get('time_s')), '.2f'):>6} "
                f"{m['extra_mib']:>10.1f} {fmt(ratio(m['extra_bytes'], base.get('extra_bytes')), '.1f'):>6} "
                f"{windows!s:>7} {load:>5}  {'; '.join(notes)}"
            )
    print()
    print("ratios:")
    for key, value in ratios.items():
        if isinstance(value, dict):
            for label, v in value.items():
                spec = ".1e" if "checksum" in label else ".2f"
                print(f"  {key}³ {label:<50} {fmt(v, spec)}")
        else:
            print(f"  {key:<54} {fmt(value)}")
    print()
    print("busy: CPU share used by other processes (and hypervisor steal) during the measurement")
    print()
    print("targets (informative):")
    for t in targets:
        print(f"  [{t['status']:>4}] {t['target']:<56} value {fmt(t['value'], '.3f')} (needs {t['op']} {t['limit']:g})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192], help="cubic volume sizes (default 128 192)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, median reported (default: 3 for inference and saliencies, 1 for autograd_swi and ig16)")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke check: size 96 only, 1 repeat, IG with 4 steps")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in every measurement (default os.cpu_count())")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="run a subset of the measurements")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each measurement wait up to this many seconds for the other processes to use < --busy-threshold of the cpus (0: don't wait)")
    parser.add_argument("--busy-threshold", type=float, default=0.10,
                        help="fraction of the cpus other processes may use during a measurement before it is re-run (default 0.10)")
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a measurement disturbed by other processes (default 2)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="measure with glibc's default allocator settings; by default every measurement process calls "
                             "esegeta_monai.apps.allocator.tune_allocator(), as the esegeta command does")
    parser.add_argument("--ig-steps", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:  # hidden child mode
        if os.environ.get("ESEGETA_MALLOC_TUNING", "1") != "0":
            from esegeta_monai.apps.allocator import tune_allocator

            tune_allocator()  # what the esegeta command does; --default-malloc turns it off
        result = measure(args.measure, args.size, args.repeats or 1, args.device, args.threads, args.ig_steps)
        print(MARKER + json.dumps(result), flush=True)
        return 0

    if args.quick:
        args.sizes, args.repeats, args.ig_steps, args.wait_quiet, args.retries = [96], args.repeats or 1, 4, 0.0, 0
    sizes = sorted(set(args.sizes))
    script = Path(__file__).resolve()
    machine = machine_info()
    print(f"bench_engine: sizes {sizes}, device {args.device}, threads {args.threads}, load {machine['loadavg_start'][0]:.2f} "
          f"on {machine['nproc']} cpu(s){', default malloc' if args.default_malloc else ', allocator tuned'}; one fresh process per measurement", flush=True)
    results: dict = {}
    crashed = False
    for size in sizes:
        for name in MEASUREMENTS:
            if name not in args.only:
                continue
            print(f"  {size}³ {name} ...", end=" ", flush=True)
            m = run_measurement(script, name, size, args)
            results.setdefault(str(size), {})[name] = m
            if "error" in m:
                crashed = True
                print(f"CRASHED ({m['error']})\n{m['stderr_tail']}", flush=True)
            else:
                print(f"{m['time_s']:.2f} s, +{m['extra_mib']:.0f} MiB", flush=True)
    ratios, targets = analyse(results, sizes, args.ig_steps)
    machine["loadavg_end"] = os.getloadavg()
    print_report(results, ratios, targets, sizes, machine, args)
    if args.out:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "config": {"roi_size": [ROI] * 3, "overlap": OVERLAP, "mode": MODE, "sw_batch_size": SW_BATCH,
                       "ig_steps": args.ig_steps, "ig_internal_batch_size": IG_INTERNAL_BATCH, "sizes": sizes,
                       "device": args.device, "threads": args.threads, "repeats": args.repeats or DEFAULT_REPEATS,
                       "allocator_tuned": not args.default_malloc},
            "machine": machine,
            "results": results,
            "ratios": ratios,
            "targets": targets,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.out}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
