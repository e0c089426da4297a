"""Cohort throughput and bookkeeping cost (issue 10), measured in one run.

On a cohort of demo-sized vessel phantoms (96×96×64, the demo bundle's grid and geometry), this
measures, each as the ``esegeta explain`` command runs it (a fresh process, start-up included):

1. jobs per hour with one process, with ``--workers 2`` and with two torchrun ranks;
2. the time of a fully resumed rerun (every job done: nothing computed);
3. the bookkeeping of a job — hashing inputs, the resume check, publishing a map with its
   checksum and journal line, the manifest — against the job itself, in one instrumented
   in-process run.

    python benchmarks/bench_cohort.py [--images 8] [--methods saliency,input_x_gradient,integrated_gradients] [--out /tmp/bench_cohort]

(integrated gradients with its own default of 50 steps: heavier jobs than the command's default
methods, whose integrated gradients take 16.)

Results: printed as a Markdown table and written to ``OUT/bench_cohort.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.phantoms import write_sample  # noqa: E402

BUNDLE = REPO / "bundles" / "vessel_mra_demo"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}


def make_cohort(folder: Path, count: int) -> list[Path]:
    """``count`` phantoms with the demo sample's geometry (LPS, 0.8×0.8×1.2 mm), seeded."""
    import nibabel as nib

    affine = nib.load(str(BUNDLE / "sample" / "vessel_phantom_0.nii.gz")).affine
    return [Path(write_sample(str(folder / f"scan_{i:02d}.nii.gz"), (96, 96, 64), seed=100 + i, affine=affine)[0])
            for i in range(count)]


def command(out: Path, images, methods: str, extra=()) -> list[str]:
    return ["-m", "esegeta_monai", "-q", "explain", "--bundle", str(BUNDLE), "--image", *map(str, images),
            "--methods", methods, "--out", str(out), "--no-progress", "--device", "cpu", *extra]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def instrumented_run(images, methods: str, out: Path) -> dict:
    """One in-process run with the bookkeeping functions timed."""
    from esegeta_monai.apps import cohort
    from esegeta_monai.apps.config import RunConfig
    from esegeta_monai.jobs import fingerprint, journal
    from esegeta_monai.methods.spec import parse_methods

    spent: dict[str, float] = defaultdict(float)

    def timing(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        setattr(owner, name, wrapper)
        return original

    patched = [
        (fingerprint.DigestCache, "entry", "hash inputs", timing(fingerprint.DigestCache, "entry", "hash inputs")),
        (journal.Journal, "publish", "publish map + record", timing(journal.Journal, "publish", "publish map + record")),
        (journal.Journal, "write_manifest", "manifest", timing(journal.Journal, "write_manifest", "manifest")),
        (journal.Journal, "start_run", "journal: run line", timing(journal.Journal, "start_run", "journal: run line")),
        (cohort, "is_done", "resume check", timing(cohort, "is_done", "resume check")),
        (cohort, "plan_units", "plan (names, keys)", timing(cohort, "plan_units", "plan (names, keys)")),
    ]
    try:
        config = RunConfig(bundle=str(BUNDLE), images=[str(i) for i in images], methods=parse_methods(methods), out=str(out),
                           device="cpu", progress=False)
        config.validate()
        start = time.perf_counter()
        result = cohort.run_explanations(config)
        total = time.perf_counter() - start
        start = time.perf_counter()
        resumed = cohort.run_explanations(config)  # every job done: planning and the resume check only
        resumed_seconds = time.perf_counter() - start
        assert resumed.summary["counts"]["skipped"] == len(result.records), resumed.summary
    finally:
        for owner, name, _, original in patched:
            setattr(owner, name, original)
    jobs = len(result.records)
    job_seconds = sum(r.seconds for r in result.records)
    # "hash inputs" happens inside "plan": shown, but counted once
    bookkeeping = dict(spent)
    own = sum(v for k, v in bookkeeping.items() if k != "hash inputs")
    return {"jobs": jobs, "run_seconds": total, "resumed_in_process_seconds": resumed_seconds, "job_seconds": job_seconds, "bookkeeping": bookkeeping,
            "bookkeeping_seconds": own, "bookkeeping_per_job_ms": 1000 * own / jobs, "job_mean_seconds": job_seconds / jobs,
            "bookkeeping_share": own / job_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--methods", default="saliency,input_x_gradient,integrated_gradients")
    parser.add_argument("--out", default="/tmp/bench_cohort")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    images = make_cohort(out / "scans", args.images)
    jobs = args.images * len(args.methods.split(","))
    python = sys.executable
    torchrun = str(Path(python).with_name("torchrun"))
    results = {"images": args.images, "methods": args.methods, "jobs": jobs, "cpu_count": os.cpu_count(), "runs": {}}

    runs = {
        "1 process": [python, *command(out / "one", images, args.methods)],
        "--workers 2": [python, *command(out / "workers", images, args.methods, ["--workers", "2"])],
        "torchrun, 2 ranks": [torchrun, "--standalone", "--nproc_per_node", "2", *command(out / "ranks", images, args.methods)],
    }
    for name, argv in runs.items():
        seconds = timed(argv)
        results["runs"][name] = {"seconds": round(seconds, 2), "jobs_per_hour": round(3600 * jobs / seconds)}
        print(f"{name}: {seconds:.1f} s, {3600 * jobs / seconds:.0f} jobs/h", flush=True)
    resumed = timed([python, *command(out / "one", images, args.methods)])
    results["resumed_rerun_seconds"] = round(resumed, 2)
    print(f"fully resumed rerun: {resumed:.1f} s", flush=True)

    bookkeeping = instrumented_run(images, args.methods, out / "instrumented")
    results["bookkeeping"] = bookkeeping
    for key in ("1 process", "--workers 2", "torchrun, 2 ranks"):
        results["runs"][key]["speed_up"] = round(results["runs"]["1 process"]["seconds"] / results["runs"][key]["seconds"], 2)
    (out / "bench_cohort.json").write_text(json.dumps(results, indent=2))

    print(f"\n{args.images} images × {args.methods} = {jobs} jobs, vessel_mra_demo on CPU ({os.cpu_count()} cores)\n")
    print("| run | seconds | jobs per hour | speed-up |\n|---|---|---|---|")
    for name, row in results["runs"].items():
        print(f"| {name} | {row['seconds']:.1f} | {row['jobs_per_hour']} | {row['speed_up']:.2f}× |")
    print(f"| fully resumed rerun | {resumed:.1f} | – | – |")
    print(f"| fully resumed rerun, in process (no start-up) | {bookkeeping['resumed_in_process_seconds']:.2f} | – | – |")
    print(f"\nbookkeeping per job: {bookkeeping['bookkeeping_per_job_ms']:.1f} ms against {bookkeeping['job_mean_seconds']:.2f} s "
          f"per job ({100 * bookkeeping['bookkeeping_share']:.2f} %):")
    for name, seconds in sorted(bookkeeping["bookkeeping"].items(), key=lambda kv: -kv[1]):
        print(f"  {name}: {1000 * seconds / bookkeeping['jobs']:.2f} ms/job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
