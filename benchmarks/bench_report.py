"""What figures, the 3D Slicer scene and the HTML report cost per image, against the map's own cost.

On `bundles/vessel_mra_demo`'s sample (its own windows, target `argmax:1`), medians of
``--repeats`` runs in one process after a warm-up, all measured in the same run:

- the job: one saliency map (prediction pass included) and writing it aligned with the scan,
  the way `esegeta explain` does (the baseline);
- the prediction's label map (inverting the class probabilities, writing uint8);
- one overlay figure of that map (three planes through the peak and through the target region's
  centre, MIPs, a zoomed crop), a comparison grid of two maps, the scene, and the HTML report
  of the folder.

    python benchmarks/bench_report.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from bench_checks import median_seconds  # the same timing as the other per-job benchmarks

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from esegeta_monai import Explainer
    from esegeta_monai.apps.cli import main as esegeta
    from esegeta_monai.core.prediction import predict
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation, prediction_labels, save_attribution, write_label_map
    from esegeta_monai.report.figures import render_comparison, render_map_figure
    from esegeta_monai.report.html import write_report
    from esegeta_monai.report.slicer import write_scene

    bundle = load_bundle(REPO / "bundles" / "vessel_mra_demo")
    sample = bundle.samples[0]
    data = load_for_explanation(sample, bundle.preprocessing)
    x = data[bundle.image_key][None]
    window = bundle.window.as_dict()
    saliency = Explainer(bundle.network, "saliency", "argmax:1", **window)
    out = Path(tempfile.mkdtemp())
    # a real output folder (journal, maps, prediction) for the figures, the scene and the report
    assert esegeta(["-q", "explain", "--bundle", str(REPO / "bundles" / "vessel_mra_demo"), "--out", str(out),
                    "--methods", "saliency,input_x_gradient", "--no-progress"]) == 0
    folder = out / Path(sample).name.split(".")[0]
    maps = [("saliency", folder / "saliency_argmax1.nii.gz"), ("input_x_gradient", folder / "input_x_gradient_argmax1.nii.gz")]
    prediction = folder / "prediction.nii.gz"
    scratch = Path(tempfile.mkdtemp())

    def job():
        save_attribution(saliency(x)[0], data, bundle.preprocessing, scratch / "saliency_argmax1.nii.gz")

    def label_map():
        scores = predict(bundle.network, x, **window)
        write_label_map(prediction_labels(scores[0], data, bundle.preprocessing), scratch / "prediction.nii.gz")

    steps = {
        "job: a saliency map, written aligned (baseline)": job,
        "the prediction's label map (a prediction pass + writing)": label_map,
        "overlay figure of one map": lambda: render_map_figure(sample, maps[0][1], scratch / "figure.png",
                                                               prediction=prediction, region_label=1, title="bench"),
        "comparison grid of two maps": lambda: render_comparison(sample, maps, scratch / "compare.png",
                                                                 prediction=prediction, region_label=1),
        "3D Slicer scene": lambda: write_scene(scratch / "scene.mrml", sample, maps, prediction=prediction),
        "HTML report of the folder": lambda: write_report(out),
    }
    results = {}
    for name, step in steps.items():
        step()  # warm-up
        results[name] = median_seconds(step, args.repeats)
    baseline = results["job: a saliency map, written aligned (baseline)"]
    per_map = results["overlay figure of one map"]
    print(f"vessel_mra_demo sample {tuple(x.shape)} (file 96×96×64), {args.threads} thread(s), medians of {args.repeats}\n")
    print("| step | ms | against the saliency job |\n|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / baseline:.1f} % |")
    print(f"\nfigures per map (the overlay) against the saliency job: {100 * per_map / baseline:.1f} % (aim: under 20 %)")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
