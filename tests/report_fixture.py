"""A small synthetic output folder for the report's tests: two images (one named with a space,
``#``, ``%`` and a non-ASCII letter), two methods × one target, with every kind of outcome.

No model runs: maps are tiny NIfTI files, figures small PNGs drawn with Pillow, and the journal
is written through :class:`~esegeta_monai.jobs.journal.Journal` as a run would write it.

================  ======================================  ======================================
image             saliency / argmax1                      input_x_gradient / argmax1
================  ======================================  ======================================
``phantom_a``     ok, figure ok                           ok, figure failed (``FIGURE_ERROR``)
``ODD``           failed (``MAP_ERROR``)                  empty
================  ======================================  ======================================

``phantom_a`` has a comparison figure, a segmentation ``prediction.json`` and a ``scene.mrml``;
``ODD`` has a classification ``prediction.json``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from esegeta_monai.jobs.journal import Journal
from esegeta_monai.jobs.record import Record

PLAIN = "phantom_a"
ODD = "case 2 #%é"
METHODS = ("saliency", "input_x_gradient")
TARGET = "argmax1"
#: the failed map's error: markup in it must be shown as text, never run
MAP_ERROR = "CUDA out of memory <script>alert(1)</script> & more"
FIGURE_ERROR = "the colour scale has no finite value"
#: the figures' size in pixels (width, height)
FIGURE_SIZE = (240, 180)
SEGMENTATION = {"kind": "segmentation", "classes": {
    "0": {"name": "background", "voxels": 30000, "volume_ml": 23.04},
    "1": {"name": "vessel", "voxels": 1607, "volume_ml": 1.2342}}}
CLASSIFICATION = {"kind": "classification", "scores": {"0": -1.25, "1": 2.5}, "probabilities": {"0": 0.0230, "1": 0.9770},
                  "predicted": 1, "names": {"0": "absent", "1": "lesion"}}
WINDOW = {"roi_size": [64, 64, 64], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2}
OPTIONS = {"saliency": {}, "input_x_gradient": {"abs": True}}


@dataclass
class Folder:
    out: Path
    run: str


def figure_png(path: Path, hue: int = 0, size: tuple[int, int] = FIGURE_SIZE) -> Path:
    """A small, clearly non-blank PNG: a dark background, a coloured disc, a grey frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (12, 14, 20))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=((200 + hue) % 256, (80 + 3 * hue) % 256, 40))
    draw.rectangle((4, 4, w - 5, h - 5), outline=(160, 160, 160), width=2)
    image.save(path, format="PNG")
    return path


def _map(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(size=(8, 8, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.2, 1.0])), str(path))
    return path


def _record(image: str, method: str, status: str, run: str, **fields) -> Record:
    return Record(f"/data/scans/{image}.nii.gz", method, TARGET, status, path=f"{image}/{method}_{TARGET}.nii.gz",
                  method_name=method, options=OPTIONS[method], target_spec="argmax:1", run=run, class_name="vessel", **fields)


def build_output_folder(out: Path) -> Folder:
    """Write the synthetic output folder into ``out`` (created); see the module's table."""
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out, fsync=False)
    run = journal.start_run({"bundle": "bundles/vessel_mra_demo", "out": str(out), "version": "0.2.0-test",
                             "methods": [{"name": m, "as": m, "options": OPTIONS[m]} for m in METHODS],
                             "targets": ["argmax:1"], "window": WINDOW, "format": "nifti"})
    for seed, method in enumerate(METHODS):
        map_path = _map(out / PLAIN / f"{method}_{TARGET}.nii.gz", seed)
        journal.append(_record(PLAIN, method, "ok", run, seconds=1.5 + seed, output=str(map_path),
                               warnings=["the header's qform was fixed"] if seed else []))
    figure_png(out / PLAIN / "figures" / f"saliency_{TARGET}.png", hue=0)
    journal.append(Record(f"/data/scans/{PLAIN}.nii.gz", "saliency", TARGET, "ok", seconds=0.4, run=run, kind="figure",
                          path=f"{PLAIN}/figures/saliency_{TARGET}.png"))
    journal.append(Record(f"/data/scans/{PLAIN}.nii.gz", "input_x_gradient", TARGET, "failed", seconds=0.1, run=run,
                          kind="figure", error=FIGURE_ERROR, path=f"{PLAIN}/figures/input_x_gradient_{TARGET}.png"))
    figure_png(out / PLAIN / "figures" / f"compare_{TARGET}.png", hue=90, size=(480, 180))
    journal.append(Record(f"/data/scans/{PLAIN}.nii.gz", "compare", TARGET, "ok", seconds=0.6, run=run, kind="figure",
                          path=f"{PLAIN}/figures/compare_{TARGET}.png"))
    (out / PLAIN / "prediction.json").write_text(json.dumps(SEGMENTATION))
    (out / PLAIN / "scene.mrml").write_text('<?xml version="1.0"?>\n<MRML version="Slicer4.4.0"></MRML>\n')

    (out / ODD).mkdir(parents=True, exist_ok=True)
    journal.append(_record(ODD, "saliency", "failed", run, seconds=0.25, error=MAP_ERROR))
    journal.append(_record(ODD, "input_x_gradient", "empty", run, seconds=0.05))
    (out / ODD / "prediction.json").write_text(json.dumps(CLASSIFICATION))
    return Folder(out, run)


def add_evaluation(out: Path) -> None:
    """What ``esegeta evaluate`` writes into ``out``: the table (one failed metric), the ranking,
    a figure."""
    rows = [
        {"image": PLAIN, "method": "saliency", "metric": "deletion", "value": 0.123456, "status": "ok", "error": ""},
        {"image": PLAIN, "method": "input_x_gradient", "metric": "deletion", "value": 0.25, "status": "ok", "error": ""},
        {"image": PLAIN, "method": "saliency", "metric": "infidelity", "value": "", "status": "failed",
         "error": "infidelity: NaN in the perturbed scores"},
        {"image": PLAIN, "method": "input_x_gradient", "metric": "infidelity", "value": 3.5, "status": "ok", "error": ""},
    ]
    with open(out / "evaluation.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image", "method", "metric", "value", "status", "error"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "ranking.json").write_text(json.dumps({
        "deletion": [{"method": "saliency", "mean": 0.123456, "better": "lower"},
                     {"method": "input_x_gradient", "mean": 0.25, "better": "lower"}],
        "infidelity": [{"method": "input_x_gradient", "mean": 3.5}]}))
    figure_png(out / "deletion_insertion.png", hue=40, size=(300, 120))
