"""What the checks of issue 13 cost against a saliency map on the demo bundle.

On `bundles/vessel_mra_demo`'s sample (its own windows, target `argmax:1`), medians of
``--repeats`` runs, in one process, after a warm-up:

- the job: one saliency map (prediction pass included) and writing it aligned with the scan
  (`save_attribution`), the way `esegeta explain` does;
- the time budget: a call with ``timeout=1e9`` (the forward pre-hook and the between-batch checks)
  against ``timeout=None``, alternated; and the hook's own cost per forward (on a module that does
  nothing) times the forwards of one call;
- the empty-region check (one count of the target's non-zero weights);
- the geometry checks: reading and checking the input's NIfTI header before loading
  (`nifti_geometry`), and reading back the written map's header before publishing it.

    python benchmarks/bench_checks.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def median_seconds(function, repeats: int) -> float:
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from esegeta_monai import Explainer
    from esegeta_monai.core.window_pass import Deadline
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation, save_attribution
    from esegeta_monai.monai.io.geometry import expected_geometry, nifti_geometry
    from esegeta_monai.monai.io.nifti import _verify_written

    bundle = load_bundle(REPO / "bundles" / "vessel_mra_demo")
    sample = bundle.samples[0]
    data = load_for_explanation(sample, bundle.preprocessing)
    x = data[bundle.image_key][None]
    window = bundle.window.as_dict()
    plain = Explainer(bundle.network, "saliency", "argmax:1", **window)
    budget = Explainer(bundle.network, "saliency", "argmax:1", timeout=1e9, **window)
    out = Path(tempfile.mkdtemp()) / "saliency_argmax1.nii.gz"

    def job():
        save_attribution(plain(x)[0], data, bundle.preprocessing, out)

    job()  # warm-up
    results = {"job (map + write)": median_seconds(job, args.repeats)}
    times = {"timeout=None": [], "timeout=1e9": []}
    for _ in range(args.repeats):
        for name, explainer in (("timeout=None", plain), ("timeout=1e9", budget)):
            start = time.perf_counter()
            explainer(x)
            times[name].append(time.perf_counter() - start)
    results.update({f"map, {k}": statistics.median(v) for k, v in times.items()})

    forwards = []
    handle = bundle.network.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    plain(x)
    handle.remove()
    probe, identity = torch.zeros(1), torch.nn.Identity()
    bare = median_seconds(lambda: [identity(probe) for _ in range(10000)], 5) / 10000
    with Deadline(1e9).watching(identity):
        hooked = median_seconds(lambda: [identity(probe) for _ in range(10000)], 5) / 10000
    results["hook, per call"] = (hooked - bare) * len(forwards)
    weights = torch.rand(1, 1, *x.shape[2:])
    results["empty-region check"] = median_seconds(lambda: (weights != 0).flatten(1).sum(1).tolist(), args.repeats)
    results["input header check"] = median_seconds(lambda: nifti_geometry(sample), args.repeats)
    expected_affine, expected_shape, source, _ = expected_geometry(data[bundle.image_key].meta)
    results["written map read back"] = median_seconds(
        lambda: _verify_written(out, "nifti", 1, expected_affine, expected_shape, source, out), args.repeats)

    job_seconds = results["job (map + write)"]
    checks = ("hook, per call", "empty-region check", "input header check", "written map read back")
    total = sum(results[k] for k in checks)
    print(f"vessel_mra_demo sample {tuple(x.shape)}, saliency argmax:1, {args.threads} thread(s), medians of {args.repeats}\n")
    print("| measurement | ms | share of the job |\n|---|---|---|")
    for key, seconds in results.items():
        print(f"| {key} | {1000 * seconds:.3f} | {100 * seconds / job_seconds:.3f} % |")
    print(f"| all checks | {1000 * total:.3f} | {100 * total / job_seconds:.3f} % |")
    print(f"\nforwards per saliency call: {len(forwards)}")
    print(json.dumps({k: round(v, 6) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
