#!/usr/bin/env python
"""The TorchEsegeta paper's evaluation study (Chatterjee et al., Applied Sciences 2022: Tables 1
and 2, Figure 9) reproduced on the synthetic vessel demo bundles.

Usage (from the repository root)::

    python benchmarks/paper_study.py --cache CACHE   # the full study (3 training seeds, 12 images),
                                                     # writes docs/paper_study.md; resumable
    python benchmarks/paper_study.py --quick --training-seeds 2   # smoke run: tiny seed trainings,
                                                     # 1 small image, few samples, no docs
    python benchmarks/paper_study.py --only randomisation   # redo the randomisation part only:
                                                     # keeps the tables of docs/paper_study.json

Models (three bundles, same data, preprocessing and sliding-window inferer):

=========================  ==============================  ======================================
paper                      bundle                          network
=========================  ==============================  ======================================
UNet                       ``bundles/vessel_mra_demo``     MONAI ``UNet`` (ReLU, batch norm)
UNet MSS                   ``bundles/vessel_mss_demo``     the same UNet + deep supervision heads
UNet MSS + deformation     ``bundles/vessel_mss_deform_demo``  the same, elastic deformation in training
=========================  ==============================  ======================================

For each model, image and method (guided backpropagation, deconvolution, saliency; target
``argmax:1``, every map exact through the bundle's windows) it computes, with
:mod:`esegeta_monai.evaluation`:

- infidelity (Captum's, 16 Gaussian perturbations of std 0.1 in normalised intensity units,
  seed 0: the same perturbations for every model and method) — Table 1;
- sensitivity (Captum's ``sensitivity_max``, 10 uniform L∞ perturbations of radius 0.02,
  seed 0) — Table 2;
- two diagnostics of Table 1: the infidelity of an all-zero map (``E[(f(x) − f(x − I))²]``, the
  output's own sensitivity to the perturbations, which raw infidelity contains) and Captum's
  ``normalize=True`` infidelity (the map scaled by its best factor), both divided by the
  former, so that models with differently scaled logits can be compared;
- cascading randomisation of every parameterised layer of the eval-mode network (output to
  input) on the bundle sample, scored by rank correlation of |maps| and SSIM — Figure 9 — twice:
  with the ``argmax:1`` region fixed from the trained model's prediction and recomputed from
  each randomised model's (:func:`esegeta_monai.evaluation.randomisation.explainer_randomisation`).

Images: the bundle sample (seed 90000, LPS, 0.8 × 0.8 × 1.2 mm; the same file in the three
bundles) and ``--phantoms`` more held-out phantoms (seeds 30000, 30001, ...; 96 × 96 × 64,
1 mm; never used in training or validation), each through the bundle's preprocessing.

Training seeds (``--training-seeds N``, default 3): seed 0 is the shipped bundle; seed k ≥ 1 is a
copy of the bundle folder (configs, sample, docs; not the weights) in ``CACHE/models/<bundle>_seed<k>/``
whose ``configs/train.yaml`` has ``seed`` = the bundle's seed + 1000 k (:func:`training_seed`), trained
there by the module its ``train.yaml`` names (``training.train`` for the three bundles). A copy whose
weights and ``training_metrics.json`` exist with exactly that config is not retrained, and every
model's results are cached by weights digest, so a killed run restarts where it stopped.

Statistics (:mod:`esegeta_monai.evaluation.statistics`): per model × method, the mean over seeds of the
per-seed mean over images with a 95 % two-way bootstrap interval (seeds and images resampled
independently) and the seed-to-seed sd; per pair of models, paired over images within each seed
(Wilcoxon signed-rank, bootstrap interval of the mean difference), Holm over each table's family, and
the seed-to-seed sd of the difference; a difference is "beyond seed variation" when it is significant
after Holm in every seed with one sign. The randomisation runs for every training seed by default
(``--randomisation-seeds``).

Cost on 2 cores (one torch thread): a full run prints its estimate first (:func:`cost_estimate`) from
the shipped trainings' measured times (``docs/training_metrics.json``: 5.6, 10.7 and 12.6 min), 65 s per
model and image for the metrics (:data:`EVAL_SECONDS_PER_MODEL_IMAGE`, measured in the 3-seed run) and
4.1 min per model and seed for the randomisation (:data:`RANDOMISATION_SECONDS_PER_MODEL`). For 3 seeds
and 12 images: training 58 min, metrics 118 min, randomisation 37 min — about 3.5 h, one overnight run. ``--jobs 2`` would halve the
training in theory (what the estimate assumes), but measured on the 2-core machine two trainings at
once took 24.5 min each against 12.6 min alone: they do not run independently there, so count the
training at 58 min either way.

Writes ``docs/paper_study.md``, ``docs/paper_study.json`` (every number) and
``docs/figures/paper_study_randomisation*.png``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esegeta_monai.monai.bundle import load_bundle  # noqa: E402
from training.phantoms import label_path_for, write_sample  # noqa: E402
from training.train import dice  # noqa: E402
from esegeta_monai.explainer import Explainer  # noqa: E402
from esegeta_monai.jobs.atomic import atomic_path, atomic_write_text  # noqa: E402
from esegeta_monai.evaluation import infidelity, sensitivity  # noqa: E402
from esegeta_monai.evaluation.statistics import bootstrap_ci, holm, min_attainable_p, paired_comparison  # noqa: E402
from esegeta_monai.evaluation.randomisation import TARGET_REGIONS, explainer_randomisation  # noqa: E402
from esegeta_monai.monai.io import load_for_explanation  # noqa: E402
from esegeta_monai.monai.io.masks import load_mask_like  # noqa: E402
from esegeta_monai.core.windowed_target import WindowedTarget  # noqa: E402

MODELS = [
    ("UNet", "bundles/vessel_mra_demo"),
    ("UNet MSS", "bundles/vessel_mss_demo"),
    ("UNet MSS + deformation", "bundles/vessel_mss_deform_demo"),
]
METHODS = {"guided_backprop": "guided backpropagation", "deconvolution": "deconvolution", "saliency": "saliency"}
TARGET = "argmax:1"
PHANTOM_SEED_START = 30000
PHANTOM_SHAPE = (96, 96, 64)
FIGURE_MODEL = "UNet MSS + deformation"


def eval_network(network: torch.nn.Module) -> torch.nn.Module:
    """The network as it runs in eval mode: a copy without the training-only deep-supervision
    heads of ``UNetMSS`` (so that randomising them, which changes nothing, is not a step)."""
    if isinstance(getattr(network, "heads", None), torch.nn.ModuleList) and len(network.heads):
        network = copy.deepcopy(network)
        network.heads = torch.nn.ModuleList()
    return network


def study_images(workdir: Path, sample: Path | None, n_phantoms: int, shape=PHANTOM_SHAPE) -> list[dict]:
    images = []
    if sample is not None:
        images.append({"name": "sample (seed 90000, LPS 0.8x0.8x1.2 mm)", "image": str(sample), "label": label_path_for(str(sample))})
    for i in range(n_phantoms):
        seed = PHANTOM_SEED_START + i
        path, label = write_sample(str(workdir / f"phantom_{seed}.nii.gz"), shape, seed=seed)
        images.append({"name": f"phantom seed {seed} (RAS 1 mm)", "image": path, "label": label})
    return images


def clean_target(explainer: Explainer, x: torch.Tensor) -> float:
    with explainer.session(x) as (window_pass, xx):
        return float(WindowedTarget(window_pass, xx).clean[0])


def _digest(*parts) -> str:
    """A key of files' contents (NIfTI: voxels and affine, not the gzip header) and values."""
    import nibabel as nib

    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, Path) and part.name.endswith((".nii", ".nii.gz")):
            image = nib.load(str(part))
            h.update(np.asarray(image.dataobj).tobytes() + np.asarray(image.affine).tobytes())
        else:
            h.update(part.read_bytes() if isinstance(part, Path) else repr(part).encode())
    return h.hexdigest()[:16]


#: seconds spent computing each part, whichever run computed it: ``{part: seconds}`` (see :func:`cached`)
COMPUTE_SECONDS: defaultdict[str, float] = defaultdict(float)


def cached(cache: Path | None, key: str, compute, part: str = "other"):
    """``compute()``, or its result stored under ``cache/key.pt`` by an earlier run (``--cache``).

    The seconds ``compute()`` took are stored with the result (written atomically, so a second
    process sharing the cache never reads half a file) and added to ``COMPUTE_SECONDS[part]``
    whether this run computed it or an earlier one did, so a resumed study reports its whole cost.
    A result stored without its seconds (before the timing) is computed once more.
    """
    path = None if cache is None else cache / f"{key}.pt"
    stored = torch.load(path, weights_only=False) if path is not None and path.is_file() else None
    if not (isinstance(stored, dict) and stored.get("format") == "timed"):
        t0 = time.monotonic()
        value = compute()
        stored = {"format": "timed", "value": value, "seconds": time.monotonic() - t0}
        if path is not None:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as partial:
                torch.save(stored, partial)
    COMPUTE_SECONDS[part] += stored["seconds"]
    return stored["value"]


# ---------------------------------------------------------------------------------------------
# training seeds: seed 0 is the shipped bundle, seed k >= 1 a copy trained under CACHE/models/

#: the training YAML's ``seed`` of training seed k is ``base + TRAINING_SEED_STEP * k``
TRAINING_SEED_STEP = 1000
#: what ``--quick`` trains instead of the bundles' configs (merged over them): seconds, not minutes
QUICK_TRAINING = {
    "data": {"shape": [48, 48, 48], "n_train": 2, "n_val": 1, "spacing_jitter": {"probability": 0.0}},
    "training": {"iterations": 6, "batch_size": 2, "patch_size": [32, 32, 32], "log_every": 3},
    "sample": {"shape": [48, 48, 32]},
}
#: measured cost of the metrics per model and image, for the estimate printed before a full run: in
#: docs/paper_study.md's 3-seed run, UNet MSS on its 12 images with nothing else running took 125 s for the
#: bundle sample and 55.8-63.3 s per phantom (the seconds stored with each cached result): 785 s / 12
EVAL_SECONDS_PER_MODEL_IMAGE = 785 / 12
#: measured cost of the cascading randomisation of the bundle sample, per model (3 methods x 2 target regions
#: x 24 maps): one guided-backpropagation curve of UNet MSS + deformation took 35.3 s (region fixed) and 47.3 s
#: (recomputed) on 1 thread of the 2-core machine (shared), so 3 x 82.6 s
RANDOMISATION_SECONDS_PER_MODEL = 3 * (35.3 + 47.3)


def training_seed(base: int, k: int) -> int:
    """The training YAML's ``seed`` for training seed ``k``: ``base + 1000 k`` (``k = 0``: the shipped
    bundle's own seed). ``training.train`` draws from ``seed``, ``seed + 1`` and ``seed + 2``, so
    no two ``k`` share a generator.

    >>> training_seed(20240917, 0), training_seed(20240917, 2)
    (20240917, 20242917)
    """
    if int(k) < 0:
        raise ValueError(f"training seed index must be >= 0, got {k}")
    return int(base) + TRAINING_SEED_STEP * int(k)


def merged(config: dict, overrides: dict) -> dict:
    """A deep copy of ``config`` with ``overrides`` merged in (nested dicts merged, other values replaced).

    >>> merged({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}})
    {'a': {'b': 1, 'c': 5}, 'd': 3}
    """
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def seed_config(config: dict, k: int, overrides: dict | None = None) -> dict:
    """The training config of training seed ``k`` of a bundle: ``config`` (its ``configs/train.yaml``)
    with ``overrides`` merged in and ``seed`` set to :func:`training_seed` of the bundle's own seed.

    >>> seed_config({"seed": 7, "training": {"iterations": 2500}}, 1, {"training": {"iterations": 6}})
    {'seed': 1007, 'training': {'iterations': 6}}
    """
    out = merged(config, overrides or {})
    out["seed"] = training_seed(config["seed"], k)
    return out


def training_module(train_yaml_text: str) -> str:
    """The training module a bundle's ``train.yaml`` names in its header (``read by training.x``),
    ``training.train`` (the three vessel bundles' module) if it names none.

    >>> training_module("# Training config, read by training.train_lesion2d:"), training_module("seed: 1")
    ('training.train_lesion2d', 'training.train')
    """
    import re

    found = re.search(r"read by (training\.[A-Za-z0-9_.]*[A-Za-z0-9_])", train_yaml_text)
    return found.group(1) if found else "training.train"


def _outputs(folder: Path, config: dict) -> tuple[Path, Path]:
    out = config.get("outputs") or {}
    return folder / out.get("model", "models/model.pt"), folder / out.get("metrics", "docs/training_metrics.json")


def is_trained(folder: Path, config: dict) -> bool:
    """Whether ``folder`` holds weights and a ``training_metrics.json`` written by a training with
    exactly ``config`` (its ``seed`` included): such a copy is not retrained."""
    weights, metrics = _outputs(folder, config)
    if not (weights.is_file() and metrics.is_file()):
        return False
    try:
        return json.loads(metrics.read_text()).get("config") == json.loads(json.dumps(config))
    except (OSError, ValueError):
        return False


def seed_folder(cache: Path, bundle: Path, k: int) -> Path:
    """``CACHE/models/<bundle>_seed<k>``: where training seed ``k >= 1`` of ``bundle`` lives."""
    return cache / "models" / f"{Path(bundle).name}_seed{k}"


def prepare_seed_copy(source: Path, folder: Path, config: dict, module: str, k: int) -> Path:
    """Copy the bundle ``source`` (configs, sample, docs; not its weights) to ``folder`` and write
    ``config`` as its ``configs/train.yaml``; returns that path. Stale outputs are removed first, so
    that only a finished training leaves weights and metrics."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("models", "eval", "*.log"), dirs_exist_ok=True)
    for stale in _outputs(folder, config):
        stale.unlink(missing_ok=True)
    path = folder / "configs" / "train.yaml"
    header = (f"# Training seed {k} of {Path(source).name} for benchmarks/paper_study.py (read by {module}):\n"
              f"# the bundle's train.yaml with seed = its seed + {TRAINING_SEED_STEP} x {k}.\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def _train_copy(task: dict, log) -> float:
    """Run one training in its copy (a subprocess from the repository root); returns its seconds."""
    import subprocess

    t0 = time.monotonic()
    log_path = task["folder"] / "training.log"
    command = [sys.executable, "-m", task["module"], "--config", str(task["config_path"])]
    log(f"training {task['folder'].name} (seed {task['config']['seed']}): {' '.join(command[1:])}, log {log_path}")
    with open(log_path, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"training of {task['folder']} failed (exit {done.returncode}):\n{tail}")
    seconds = time.monotonic() - t0
    atomic_write_text(task["folder"] / "docs" / "study_training.json", json.dumps(
        {"seed": task["config"]["seed"], "k": task["k"], "seconds": round(seconds, 1), "command": " ".join(command[1:])}) + "\n")
    log(f"trained {task['folder'].name} in {seconds / 60:.1f} min")
    return seconds


def seed_bundles(paths: list[Path], n_seeds: int, cache: Path | None, log, overrides: dict | None = None, jobs: int = 1) -> list[list[Path]]:
    """The bundle folders of every training seed: ``[k][model]``; seed 0 the shipped bundles, seeds
    ``k >= 1`` trained copies under ``CACHE/models`` — trained now (``jobs`` at a time, longest
    first) unless :func:`is_trained`."""
    folders = [[Path(p) for p in paths]]
    tasks = []
    for k in range(1, n_seeds):
        if cache is None:
            raise ValueError("training seeds beyond the shipped bundles need --cache (their trained copies live there)")
        row = []
        for source in paths:
            text = (Path(source) / "configs" / "train.yaml").read_text()
            config = seed_config(yaml.safe_load(text), k, overrides)
            folder = seed_folder(cache, source, k)
            row.append(folder)
            if is_trained(folder, config):
                log(f"{folder.name}: trained (seed {config['seed']}), kept")
                continue
            module = training_module(text)
            tasks.append({"folder": folder, "config": config, "module": module, "k": k,
                          "config_path": prepare_seed_copy(Path(source), folder, config, module, k),
                          "expected": training_seconds(Path(source))})
        folders.append(row)
    tasks.sort(key=lambda t: -t["expected"])
    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda t: _train_copy(t, log), tasks))
    else:
        for task in tasks:
            _train_copy(task, log)
    return folders


def training_seconds(bundle: Path) -> float:
    """The shipped training's measured seconds (``train_time_s + data_time_s`` of its
    ``docs/training_metrics.json``; NaN if absent)."""
    try:
        metrics = json.loads((Path(bundle) / "docs" / "training_metrics.json").read_text())
        return float(metrics["train_time_s"]) + float(metrics.get("data_time_s", 0.0))
    except (OSError, ValueError, KeyError):
        return float("nan")


def makespan(durations: list[float], jobs: int) -> float:
    """Wall time of running ``durations`` on ``jobs`` workers, longest first, each to the least loaded.

    >>> makespan([3.0, 2.0, 2.0, 1.0], 1), makespan([3.0, 2.0, 2.0, 1.0], 2)
    (8.0, 4.0)
    """
    loads = [0.0] * max(1, int(jobs))
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def cost_estimate(train_seconds: list[float], n_seeds: int, n_images: int, randomisation_seeds: int, jobs: int = 1,
                  eval_seconds: float = EVAL_SECONDS_PER_MODEL_IMAGE,
                  randomisation_seconds: float = RANDOMISATION_SECONDS_PER_MODEL) -> dict:
    """Minutes of each part of a study run from nothing: training seeds ``1..n_seeds-1`` of each model
    (``train_seconds``: one training of each, ``jobs`` at a time), the metrics of every model, seed and
    image, and the randomisation of ``randomisation_seeds`` seeds.

    >>> e = cost_estimate([60.0, 120.0], n_seeds=2, n_images=3, randomisation_seeds=1, eval_seconds=10, randomisation_seconds=30)
    >>> e["training"], e["metrics"], e["randomisation"], e["total"]
    (3.0, 2.0, 1.0, 6.0)
    """
    n_models = len(train_seconds)
    parts = {"training": makespan(list(train_seconds) * (n_seeds - 1), jobs) / 60,
             "metrics": n_models * n_seeds * n_images * eval_seconds / 60,
             "randomisation": n_models * randomisation_seeds * randomisation_seconds / 60}
    return {**{k: round(v, 1) for k, v in parts.items()}, "total": round(sum(parts.values()), 1)}


# ---------------------------------------------------------------------------------------------
# statistics over training seeds and images (statistics.py's tests and intervals)


def two_way_bootstrap_ci(values, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values[seed, image]`` resampling training seeds
    and images independently, both with replacement (a crossed design: every seed sees the same
    images); with one training seed it is :func:`~esegeta_monai.evaluation.statistics.bootstrap_ci`
    over the images.

    >>> two_way_bootstrap_ci([[1.0, 2.0, 3.0]]) == bootstrap_ci([1.0, 2.0, 3.0])
    True
    >>> two_way_bootstrap_ci([[1.0, 1.0], [1.0, 1.0]])
    (1.0, 1.0)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be a non-empty [seeds, images] array, got shape {values.shape}")
    if values.shape[0] == 1:
        return bootstrap_ci(values[0], n_boot=n_boot, confidence=confidence, seed=seed)
    rng = np.random.default_rng(seed)
    n_s, n_i = values.shape
    s = rng.integers(0, n_s, size=(n_boot, n_s))
    i = rng.integers(0, n_i, size=(n_boot, n_i))
    means = values[s[:, :, None], i[:, None, :]].mean(axis=(1, 2))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def seed_image_matrix(rows: list[dict], key: str, model: str, method: str) -> tuple[np.ndarray, list[int], list[str]]:
    """``values[seed, image]`` of ``key`` for one model and method (seeds and images sorted), with them."""
    cells = {(r.get("training_seed", 0), r["image"]): r[key] for r in rows if r["model"] == model and r["method"] == method}
    seeds = sorted({s for s, _ in cells})
    images = sorted({i for _, i in cells})
    missing = [(s, i) for s in seeds for i in images if (s, i) not in cells]
    if missing:
        raise ValueError(f"{model} / {method}: no {key} for (training seed, image) {missing[:3]}")
    return np.array([[cells[(s, i)] for i in images] for s in seeds], dtype=np.float64), seeds, images


def cell_summary(values, n_boot: int = 10_000, seed: int = 0) -> dict:
    """One model × method cell: the mean over seeds of the per-seed means over images, its two-way
    bootstrap interval, the seed-to-seed sd of the per-seed means (NaN with one seed) and those means.

    >>> c = cell_summary([[1.0, 3.0], [3.0, 5.0]])
    >>> c["mean"], c["per_seed"], round(c["seed_sd"], 4)
    (3.0, [2.0, 4.0], 1.4142)
    """
    values = np.asarray(values, dtype=np.float64)
    per_seed = values.mean(axis=1)
    low, high = two_way_bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"mean": float(per_seed.mean()), "ci_low": low, "ci_high": high,
            "seed_sd": float(np.std(per_seed, ddof=1)) if per_seed.size > 1 else float("nan"),
            "per_seed": [float(v) for v in per_seed], "n_seeds": int(values.shape[0]), "n_images": int(values.shape[1])}


def seed_table(rows: list[dict], key: str, models: list[str], methods, n_boot: int = 10_000, seed: int = 0) -> dict:
    """``{method: {model: cell_summary}}`` of ``key``."""
    return {m: {n: cell_summary(seed_image_matrix(rows, key, n, m)[0], n_boot, seed) for n in models} for m in methods}


def compare_models(rows: list[dict], key: str, models: list[str], methods, n_boot: int = 10_000, seed: int = 0,
                   alpha: float = 0.05) -> list[dict]:
    """Every pair of models, for each method: paired over images within each training seed
    (:func:`~esegeta_monai.evaluation.statistics.paired_comparison`: Wilcoxon signed-rank and a bootstrap
    interval of the mean difference), Holm over this metric's family (every pair, method and seed), and
    across seeds: the mean difference with its two-way bootstrap interval, the seed-to-seed sd of the
    per-seed mean differences and a verdict — ``beyond seed variation`` when the difference is
    significant after Holm in every seed with one sign."""
    out = []
    for method in methods:
        for ia, a in enumerate(models):
            for b in models[ia + 1:]:
                va, seeds, images = seed_image_matrix(rows, key, a, method)
                vb, seeds_b, images_b = seed_image_matrix(rows, key, b, method)
                if (seeds, images) != (seeds_b, images_b):
                    raise ValueError(f"{a} and {b} are not on the same training seeds and images")
                d = va - vb
                per_seed = [{"training_seed": s, **paired_comparison(va[j], vb[j], n_boot=n_boot, seed=seed)} for j, s in enumerate(seeds)]
                low, high = two_way_bootstrap_ci(d, n_boot=n_boot, seed=seed)
                means = d.mean(axis=1)
                out.append({"metric": key, "method": method, "a": a, "b": b, "per_seed": per_seed, "mean_difference": float(means.mean()),
                            "ci_low": low, "ci_high": high, "n_seeds": len(seeds), "n_images": len(images),
                            "seed_sd": float(np.std(means, ddof=1)) if len(seeds) > 1 else float("nan")})
    adjusted = holm([1.0 if c["p"] is None else c["p"] for r in out for c in r["per_seed"]])
    it = iter(adjusted)
    for r in out:
        for c in r["per_seed"]:
            c["p_holm"] = next(it)
        significant = [c["p_holm"] <= alpha for c in r["per_seed"]]
        signs = {int(np.sign(c["mean_difference"])) for c in r["per_seed"]}
        r["significant_seeds"] = int(sum(significant))
        r["same_sign"] = len(signs) == 1 and 0 not in signs
        if len(significant) == 1:
            r["verdict"] = ("significant" if significant[0] else "not significant") + " (one training seed: its variation not measured)"
        elif all(significant) and r["same_sign"]:
            r["verdict"] = "beyond seed variation"
        else:
            r["verdict"] = f"significant in {sum(significant)} of {len(significant)} seeds" + ("" if r["same_sign"] else "; the sign differs between seeds")
    return out


def window_of(bundle, override: dict | None = None) -> dict:
    """The Explainer's window keywords: the bundle's inferer, ``override`` (``--quick``: a smaller roi) over it."""
    return {**bundle.window.as_dict(), **(override or {})}


def _window_key(override: dict | None) -> tuple:
    return (repr(sorted(override.items())),) if override else ()  # no override: the keys of earlier runs


def run_metrics(models, images, n_inf: int, n_sens: int, seed: int, log, cache: Path | None = None,
                training_seed: int = 0, window: dict | None = None) -> list[dict]:
    rows = []
    for model_name, bundle in models:
        for image in images:
            key = "metrics_" + _digest(bundle.weights_path, Path(image["image"]), n_inf, n_sens, seed, list(METHODS), torch.get_num_threads(),
                                       *_window_key(window))
            found = cached(cache, key, lambda: _image_metrics(model_name, bundle, image, n_inf, n_sens, seed, log, window),
                           part="metrics")
            if cache is not None:
                log(f"{model_name:24s} seed {training_seed} {image['name'][:28]:28s} " + "  ".join(
                    f"{r['method']} inf {r['infidelity']:.5g} sens {r['sensitivity']:.4f}" for r in found))
            rows.extend({**row, "model": model_name, "training_seed": training_seed} for row in found)
    return rows


def _image_metrics(model_name, bundle, image, n_inf: int, n_sens: int, seed: int, log, window_override: dict | None = None) -> list[dict]:
    rows = []
    window = window_of(bundle, window_override)
    data = load_for_explanation(image["image"], bundle.preprocessing, bundle.image_key)
    x = data[bundle.image_key][None].as_tensor()
    base_explainer = Explainer(bundle.network, "saliency", TARGET, **window)
    prediction = base_explainer.predict(x).argmax(1)[0].numpy()
    label = load_mask_like(image["label"], data[bundle.image_key])
    t0 = time.monotonic()
    target_value = clean_target(base_explainer, x)
    zero = infidelity(base_explainer, x, torch.zeros_like(x), n_samples=n_inf, seed=seed)["infidelity"]
    common = {"model": model_name, "image": image["name"], "dice": dice(prediction, label), "target": target_value,
              "infidelity_zero_map": zero}
    log(f"{model_name:24s} {image['name'][:28]:28s} Dice {common['dice']:.4f}  T(x) {target_value:.4g}  "
        f"E[dT^2] {zero:.4g}  ({time.monotonic() - t0:.1f}s)")
    for method in METHODS:
        t0 = time.monotonic()
        explainer = Explainer(bundle.network, method, TARGET, **window)
        attribution = explainer(x)
        inf = infidelity(explainer, x, attribution, n_samples=n_inf, seed=seed)["infidelity"]
        inf_norm = infidelity(explainer, x, attribution, n_samples=n_inf, seed=seed, normalize=True)["infidelity"]
        sens = sensitivity(explainer, x, n_samples=n_sens, seed=seed)["sensitivity"]
        rows.append({**common, "method": method, "infidelity": inf, "infidelity_normalized": inf_norm,
                     "relative_infidelity": inf / zero, "relative_infidelity_normalized": inf_norm / zero,
                     "sensitivity": sens, "n_infidelity": n_inf, "n_sensitivity": n_sens, "seed": seed,
                     "seconds": round(time.monotonic() - t0, 1)})
        log(f"    {method:16s} infidelity {inf:.5g} (relative {inf / zero:.4f}, normalised {inf_norm / zero:.4f})  "
            f"sensitivity {sens:.4f}  ({rows[-1]['seconds']}s)")
    return rows


def run_randomisation(models, sample: str, seed: int, log, cache: Path | None = None, regions=TARGET_REGIONS,
                      window_override: dict | None = None) -> dict:
    """``{"model|method|region": {"steps": [...], "mips": [...]}}`` for each target region."""
    curves = {}
    for model_name, bundle in models:
        window = window_of(bundle, window_override)
        data = load_for_explanation(sample, bundle.preprocessing, bundle.image_key)
        x = data[bundle.image_key][None].as_tensor()
        network = eval_network(bundle.network)
        for region in regions:
            for method in METHODS:
                def compute(method=method, region=region):
                    t0 = time.monotonic()
                    steps = explainer_randomisation(Explainer(network, method, TARGET, **window), x, region, seed=seed)
                    log(f"randomisation {model_name:24s} {method:16s} {region:10s} {len(steps) - 1} layers: final spearman_abs "
                        f"{steps[-1]['spearman_abs']:.3f}, ssim {steps[-1]['ssim']:.3f}, region Dice "
                        f"{steps[-1]['region_dice'][0]:.3f}  ({time.monotonic() - t0:.1f}s)")
                    return {"steps": [{k: v for k, v in s.items() if k != "map"} for s in steps], "voxels": int(x[0, 0].numel()),
                            "mips": [np.abs(s["map"][0].sum(0).numpy()).max(axis=2) for s in steps]}  # |map| max-projection along S
                key = "randomisation_" + _digest(bundle.weights_path, Path(sample), method, seed, region, torch.get_num_threads(),
                                                 *_window_key(window_override))
                curves[f"{model_name}|{method}|{region}"] = cached(cache, key, compute, part="randomisation")
    return curves


def _save_small_png(fig, path: Path, dpi: int = 80) -> None:
    """Save a figure as a palette PNG (256 colours): a few hundred KB at most."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def figures(curves: dict, out: Path) -> list[Path]:
    """The Figure 9 analogue for each target region, then the curves of the three models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    regions = [r for r in TARGET_REGIONS if f"{FIGURE_MODEL}|{next(iter(METHODS))}|{r}" in curves]
    for region in regions:  # maps of one model at a few cascade steps (rows: methods) + the curves
        fig, axes = plt.subplots(len(METHODS), 7, figsize=(13.5, 2.0 * len(METHODS) + 0.4),
                                 gridspec_kw={"width_ratios": [1] * 6 + [1.6]})
        for row, method in enumerate(METHODS):
            curve = curves[f"{FIGURE_MODEL}|{method}|{region}"]
            steps = curve["steps"]
            n = len(steps) - 1
            shown = sorted({0, 1, *[int(round(f * n)) for f in (0.25, 0.5, 0.75)], n})[:6]
            for col, i in enumerate(shown):
                ax = axes[row, col]
                mip = curve["mips"][i]
                ax.imshow(np.rot90(mip), cmap="hot", vmin=0, vmax=mip.max() if mip.max() > 0 else 1)
                ax.set_xticks([])
                ax.set_yticks([])
                title = "original" if i == 0 else f"{i}/{n}: {steps[i]['layer'][-16:]}"
                ax.set_title(title, fontsize=7)
                if col == 0:
                    ax.set_ylabel(METHODS[method], fontsize=8)
            for col in range(len(shown), 6):
                axes[row, col].axis("off")
            ax = axes[row, 6]
            fractions = np.arange(len(steps)) / max(n, 1)
            for name, style in (("spearman_abs", "-"), ("spearman", ":"), ("ssim", "--"), ("topk_overlap", "-.")):
                ax.plot(fractions, [s[name] for s in steps], style, label=name)
            ax.plot(fractions, [s["region_dice"][0] for s in steps], color="grey", lw=0.8, label="region Dice")
            ax.set_ylim(-0.3, 1.05)
            ax.tick_params(labelsize=7)
            if row == 0:
                ax.legend(fontsize=6, loc="lower left")
            if row == len(METHODS) - 1:
                ax.set_xlabel("share of layers randomised (output → input)", fontsize=7)
        fig.suptitle(f"Cascading randomisation, {FIGURE_MODEL}, target region {region} (bundle sample; "
                     "|map| maximum projection along S)", fontsize=9)
        fig.tight_layout()
        path = out / ("paper_study_randomisation.png" if region == "fixed" else f"paper_study_randomisation_{region}.png")
        _save_small_png(fig, path)
        plt.close(fig)
        paths.append(path)
    # the rank-correlation curves of the three models, one panel per method, both regions
    fig, axes = plt.subplots(1, len(METHODS), figsize=(11, 3.2), sharey=True)
    for ax, method in zip(axes, METHODS):
        for model_name, _ in MODELS:
            colour = None
            for region, style in zip(regions, ("-", "--")):
                steps = curves[f"{model_name}|{method}|{region}"]["steps"]
                fractions = np.arange(len(steps)) / max(len(steps) - 1, 1)
                line, = ax.plot(fractions, [s["spearman_abs"] for s in steps], style, color=colour, label=f"{model_name}, {region}")
                colour = line.get_color()
        ax.set_title(METHODS[method], fontsize=9)
        ax.set_xlabel("share of layers randomised (output → input)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("rank correlation of |maps| with the original", fontsize=8)
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    path = out / "paper_study_randomisation_models.png"
    _save_small_png(fig, path)
    plt.close(fig)
    paths.append(path)
    return paths


METRICS = {
    "infidelity": "infidelity",
    "relative_infidelity": "infidelity / zero-map infidelity",
    "relative_infidelity_normalized": "infidelity (normalize=True) / zero-map infidelity",
    "sensitivity": "sensitivity",
}


def summary(rows: list[dict], key: str) -> dict:
    """``{method: {model: (mean, sd, values)}}`` over every (training seed, image) row."""
    table = {}
    for method in METHODS:
        for model_name, _ in MODELS:
            values = [r[key] for r in rows if r["method"] == method and r["model"] == model_name]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            table.setdefault(method, {})[model_name] = (float(np.mean(values)), sd, values)
    return table


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _decimals(scale: float) -> int | None:
    """Decimals that give ``scale`` two significant digits (None: no finite positive scale)."""
    if not np.isfinite(scale) or scale <= 0:
        return None
    return int(min(4, max(0, 1 - np.floor(np.log10(scale)))))


def _fmt_pair(mean: float, sd: float) -> str:
    """``mean ± sd`` with two significant digits of the sd and the mean to the same decimal."""
    decimals = _decimals(sd)
    if decimals is None:
        return f"{_fmt(mean)} ± {sd}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def _fmt_cell(cell: dict) -> str:
    """``mean [low, high] (sd s)``: the interval's width (or the seed sd, if smaller) to two digits."""
    scales = [v for v in (cell["ci_high"] - cell["ci_low"], cell["seed_sd"]) if np.isfinite(v) and v > 0]
    d = _decimals(min(scales)) if scales else None
    f = (lambda v: f"{v:.{d}f}") if d is not None else _fmt
    sd = f"sd {f(cell['seed_sd'])}" if np.isfinite(cell["seed_sd"]) else "one seed"
    return f"{f(cell['mean'])} [{f(cell['ci_low'])}, {f(cell['ci_high'])}] ({sd})"


def markdown_table(table: dict, bold_lowest: bool = True) -> str:
    """Methods × models of a :func:`seed_table`; the lowest mean of a row bold."""
    names = [m for m, _ in MODELS]
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method, per_model in table.items():
        lowest = min(names, key=lambda n: per_model[n]["mean"])
        cells = [f"**{_fmt_cell(per_model[n])}**" if bold_lowest and n == lowest else _fmt_cell(per_model[n]) for n in names]
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(comparisons: list[dict]) -> str:
    """One row per method and pair of models: the mean difference over seeds with its interval, the
    seed-to-seed sd, each seed's mean difference with its Holm-adjusted p, and the verdict."""
    lines = ["| method | A − B | mean difference [95 % CI] | seed-to-seed sd | per seed: mean difference (Holm p) | verdict |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        cell = {"mean": c["mean_difference"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "seed_sd": c["seed_sd"]}
        text = _fmt_cell(cell).rsplit(" (", 1)[0]
        sd = _fmt(c["seed_sd"]) if np.isfinite(c["seed_sd"]) else "—"
        per_seed = "; ".join(f"{_fmt(p['mean_difference'])} ({p['p_holm']:.3g})" for p in c["per_seed"])
        verdict = f"**{c['verdict']}**" if c["verdict"] == "beyond seed variation" else c["verdict"]
        lines.append(f"| {METHODS[c['method']]} | {c['a']} − {c['b']} | {text} | {sd} | {per_seed} | {verdict} |")
    return "\n".join(lines)


def ordering(rows: list[dict], key: str) -> dict:
    """Per method: the model with the lowest mean, and on how many (training seed, image) units the
    deformation model is the lowest of the three."""
    deform = MODELS[2][0]
    units = sorted({(r.get("training_seed", 0), r["image"]) for r in rows})
    result = {}
    for method, per_model in summary(rows, key).items():
        lowest = min(per_model, key=lambda n: per_model[n][0])
        highest = max(per_model, key=lambda n: per_model[n][0])
        per_unit = []
        for unit in units:
            values = {r["model"]: r[key] for r in rows if r["method"] == method and (r.get("training_seed", 0), r["image"]) == unit}
            per_unit.append(min(values, key=values.get))
        result[method] = {"lowest": lowest, "highest": highest, "deform_lowest": lowest == deform,
                          "lowest_images": per_unit.count(lowest), "deform_lowest_images": per_unit.count(deform),
                          "images": len(units)}
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import monai

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch thread(s); Python {platform.python_version()}, "
            f"torch {torch.__version__}, MONAI {monai.__version__}, {platform.system()} {platform.release()}")


def _seed_lines(info: dict) -> str:
    """The setup's bullet on training seeds."""
    seeds = info.get("training_seeds", {"n": 1})
    n = seeds["n"]
    if n == 1:
        return "- **Training seeds**: 1 (the shipped bundles); seed-to-seed variation is not measured.\n"
    times = seeds.get("minutes", {})
    measured = "; ".join(f"{name}: {', '.join(f'{m:.1f}' for m in mins)} min" for name, mins in times.items() if mins)
    return (f"- **Training seeds**: {n} per model. Seed 0 is the shipped bundle (training `seed` {seeds['base']}); seed k ≥ 1 is a "
            f"copy of the bundle (configs, sample, docs; not the weights) in `CACHE/models/<bundle>_seed<k>/` whose "
            f"`configs/train.yaml` has `seed` = {seeds['base']} + {TRAINING_SEED_STEP} k — network initialisation, "
            "spacing jitter, patches, augmentation and deformation draws change; the training phantoms, iterations "
            "and everything else stay — trained by its training module (`training.train`)"
            + (f" with `--quick`'s tiny config ({json.dumps(QUICK_TRAINING)})" if seeds.get("quick") else "")
            + (f". Training time of each copy (measured in the run that trained it): {measured}" if measured else "")
            + ". Seed k of one model is compared with seed k of the others (same seed value: same initialisation of "
            "the shared backbone and the same patch draws).\n")


def _cost_line(info: dict) -> str:
    """The setup's bullet on the whole study's compute, summed over the runs that computed its parts."""
    parts = info.get("compute_minutes")
    if not parts:
        return ""
    total = sum(parts.values())
    listed = ", ".join(f"{part} {minutes:.1f} min" for part, minutes in parts.items())
    return (f"- **Compute** of the whole study, each part timed by the run that computed it (a rerun with `--cache` "
            f"reuses what is there, so the wall time above can be shorter): {listed}; **{total / 60:.2f} h** in all, "
            "plus the shipped bundles' own trainings (their `docs/training_metrics.json`).\n")


def write_markdown(path: Path, rows, curves_by_seed, figs, info: dict, stats: dict) -> None:
    models = [m for m, _ in MODELS]
    deform = models[2]
    tables, comparisons = stats["tables"], stats["comparisons"]
    order_inf, order_sens = ordering(rows, "infidelity"), ordering(rows, "sensitivity")
    order_rel = ordering(rows, "relative_infidelity")
    holds = {m: order_inf[m]["deform_lowest"] and order_sens[m]["deform_lowest"] for m in METHODS}
    n_holds = sum(holds.values())
    verdict = ("holds" if n_holds == len(METHODS) else "does not hold" if n_holds == 0 else "holds only in part")
    n_seeds = info.get("training_seeds", {}).get("n", 1)
    n_images = len(info["images"])

    def ordering_rows(label, order, key) -> list[str]:
        lines = []
        for method, o in order.items():
            rank = sorted(models, key=lambda n: tables[key][method][n]["mean"]).index(deform) + 1
            lines.append(f"| {label} | {METHODS[method]} | {o['lowest']} ({o['lowest_images']} of {o['images']}) | "
                         f"{o['highest']} | {rank} of {len(models)} ({o['deform_lowest_images']} of {o['images']}) |")
        return lines

    def robust_lower(key: str, method: str) -> bool:
        """The deformation model below both others by a difference beyond seed variation."""
        found = [c for c in comparisons[key] if c["method"] == method and deform in (c["a"], c["b"])]
        return all(c["verdict"] == "beyond seed variation" and (c["mean_difference"] < 0) == (c["a"] == deform) for c in found)

    robust_holds = sum(robust_lower("infidelity", m) and robust_lower("sensitivity", m) for m in METHODS)
    dice_lines = []
    for n in models:
        values = [r["dice"] for r in rows if r["model"] == n and r["method"] == "saliency"]
        targets = [r["target"] for r in rows if r["model"] == n and r["method"] == "saliency"]
        zeros = [r["infidelity_zero_map"] for r in rows if r["model"] == n and r["method"] == "saliency"]
        held = np.atleast_1d(info["heldout_dice"][n])
        held_text = f"{held.mean():.4f}" + (f" ± {np.std(held, ddof=1):.4f}" if held.size > 1 else "")
        dice_lines.append(f"| {n} | {held_text} | {np.mean(values):.4f} | {_fmt(np.mean(targets))} | {_fmt(np.mean(zeros))} |")
    beyond = {key: sum(c["verdict"] == "beyond seed variation" for c in comparisons[key]) for key in METRICS}
    family = len(comparisons["infidelity"]) * n_seeds
    boot = stats["n_boot"]

    def section(key: str) -> str:
        n_beyond = beyond[key]
        return (f"{markdown_table(tables[key])}\n\nDifferences between models ({METRICS[key]}; Holm over this table's "
                f"{family} tests):\n\n{differences_table(comparisons[key])}\n\n{n_beyond} of {len(comparisons[key])} "
                f"differences are beyond seed-to-seed variation.\n")

    text = f"""# The TorchEsegeta paper's study on the synthetic vessel bundles

Chatterjee et al. (TorchEsegeta, *Applied Sciences* 2022) evaluated guided backpropagation,
deconvolution and saliency on DS6 vessel segmentation models by infidelity (their Table 1),
sensitivity (Table 2) and cascading randomisation (Figure 9), for a 3D UNet, a UNet with
multi-scale deep supervision (UNet MSS) and UNet MSS trained with elastic deformation; the
deformation-trained model scored lowest on both infidelity and sensitivity. This page repeats
the study on the three demo bundles trained on synthetic TOF-MRA-like phantoms, with {n_seeds} training
seed(s) per model. *Generated by `benchmarks/paper_study.py`; every number below comes from its run.*

## Setup

- **Command** (repository root): `{info['command']}` — {info['minutes']:.1f} min{" (a quick smoke run: not the study)" if info.get("quick") else ""}.
{_cost_line(info)}- **Machine**: {info['machine']}.
- **Models**: `bundles/vessel_mra_demo` (UNet), `bundles/vessel_mss_demo` (the same UNet with two
  deep-supervision heads, trained with `DeepSupervisionLoss`), `bundles/vessel_mss_deform_demo`
  (the same plus elastic deformation of half of the training patches). Same phantoms, seeds,
  patches, iterations, optimiser, preprocessing and sliding-window inferer (roi 64³, overlap
  0.25, gaussian{"; this quick run: roi " + "×".join(map(str, info["window_override"]["roi_size"])) if info.get("window_override") else ""}); see each bundle's `docs/README.md`.
{_seed_lines(info)}- **Images** ({n_images}): {"; ".join(info['images'])}. Each goes through the bundle's preprocessing
  (RAS, 1 mm, percentile scaling to [0, 1]).
- **Target** `{TARGET}`: the vessel logits summed over the voxels each model predicts as vessel
  (so the target differs between models, as in the paper). Every map is exact through the
  bundle's sliding windows (`esegeta_monai.Explainer`).
- **Infidelity**: `esegeta_monai.evaluation.infidelity` (Captum's), {info['n_inf']} Gaussian perturbations (std 0.1 of
  the normalised intensity) per image, seed {info['seed']} — the same perturbations for every model and method.
- **Sensitivity**: `esegeta_monai.evaluation.sensitivity` (Captum's `sensitivity_max`), {info['n_sens']} uniform
  perturbations of L∞ radius 0.02 per image, seed {info['seed']}.
- **Tables**: each cell is the mean over the {n_seeds} training seed(s) of each seed's mean over the {n_images} images,
  its 95 % interval — a percentile bootstrap resampling training seeds and images independently, both with
  replacement ({boot} draws, seed {info['seed']}; one seed: images only) — and the seed-to-seed sd of the per-seed
  means. The lowest mean of a row is bold (lower is better for both metrics).
- **Model differences**: within each training seed, the two models' values on the same images are compared
  (`esegeta_monai.evaluation.statistics.paired_comparison`: two-sided Wilcoxon signed-rank test, bootstrap
  95 % interval of the mean difference); the p-values are Holm-adjusted over each table's family (every pair of
  models, method and seed: {family} tests; with {n_images} images the smallest attainable p is {min_attainable_p(n_images):.2g}).
  Beside each: the mean difference over seeds with its two-way bootstrap interval and the seed-to-seed sd of
  the per-seed mean differences. A difference is **beyond seed variation** when it is significant after Holm
  (α = 0.05) in every seed, with one sign; otherwise the verdict says in how many seeds it is.

Context (held-out Dice: mean ± sd over the training seeds; the rest: mean over seeds and images):

| model | held-out Dice (the training script's held-out phantoms) | Dice on the study images (network grid) | mean target T(x) | mean E[(T(x) − T(x − I))²] |
|---|---|---|---|---|
{chr(10).join(dice_lines)}

## Table 1 analogue: infidelity (lower is better)

{section("infidelity")}
Raw infidelity, `E[(Iᵀ·map − (T(x) − T(x − I)))²]`, contains the output's own variation under
the perturbations (last column above: the infidelity of an all-zero map). Divided by it
(1 = no better than a zero map; below 1, the map predicts part of the output change):

{section("relative_infidelity")}
and with Captum's `normalize=True` (each map scaled by its best factor before scoring; 1 − this
is the share of the output change the map's direction explains):

{section("relative_infidelity_normalized")}
## Table 2 analogue: sensitivity (lower is better)

{section("sensitivity")}
{randomisation_section(curves_by_seed, figs, info, path.parent)}
## Does the paper's ordering hold here?

The paper found the deformation-trained model lowest on both infidelity and sensitivity. Here,
by the means, the ordering **{verdict}** ({n_holds} of {len(METHODS)} methods have {deform} lowest on both);
with differences beyond seed-to-seed variation against both other models on both metrics it holds
for **{robust_holds} of {len(METHODS)}** methods. Over the four tables, {sum(beyond.values())} of
{sum(len(c) for c in comparisons.values())} model-to-model differences are beyond seed-to-seed variation
({", ".join(f"{METRICS[k]}: {v}" for k, v in beyond.items())}).

| metric | method | lowest mean (seed × image units where lowest) | highest mean | {deform}: rank of its mean (units where lowest) |
|---|---|---|---|---|
{chr(10).join(ordering_rows("infidelity", order_inf, "infidelity") + ordering_rows("sensitivity", order_sens, "sensitivity") + ordering_rows("infidelity / zero-map infidelity", order_rel, "relative_infidelity"))}

"""
    text += discussion(rows, info, stats)
    atomic_write_text(path, text)


def randomisation_seed_table(curves_by_seed: dict) -> str:
    """Final-step rank correlation of |maps| per model, method and region: mean ± sd over the
    training seeds randomised, and their range."""
    models = [m for m, _ in MODELS]
    seeds = sorted(curves_by_seed)
    lines = ["| target region | method | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for region in TARGET_REGIONS:
        for method in METHODS:
            cells = []
            for n in models:
                v = np.array([curves_by_seed[k][f"{n}|{method}|{region}"]["steps"][-1]["spearman_abs"] for k in seeds])
                cells.append(f"{_fmt_pair(float(v.mean()), float(np.std(v, ddof=1)))} ({v.min():.3f}–{v.max():.3f})")
            lines.append(f"| {region} | {METHODS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def randomisation_section(curves_by_seed: dict, figs: list[Path], info: dict, docs: Path) -> str:
    """The Figure 9 section: both target regions, their tables, the regions' drift and what a high
    fixed-region correlation means; every number from ``curves_by_seed`` (figures and the detailed
    tables: training seed 0, the shipped bundles; then the spread over the seeds randomised)."""
    curves = curves_by_seed[0]
    n_rand = len(curves_by_seed)
    seeds_text = (f"\n\nThe figures and the other tables of this section show training seed 0 (the shipped bundles). Over the "
                  f"{n_rand} training seeds randomised, the rank correlation of |maps| after the last step (mean ± sd over "
                  "seeds, range in parentheses):\n\n"
                  + randomisation_seed_table(curves_by_seed)) if n_rand > 1 else (
                  "\n\nOnly training seed 0 (the shipped bundles) was randomised: seed-to-seed variation of these curves is not measured.")
    models = [m for m, _ in MODELS]
    first = curves[f"{models[0]}|{next(iter(METHODS))}|fixed"]["steps"]
    n_layers = len(first) - 1
    picks = (1, n_layers // 2, n_layers)

    def table(region: str) -> str:
        lines = [f"| method | {' | '.join(models)} |", "|---|" + "---|" * len(models)]
        for method in METHODS:
            cells = []
            for n in models:
                steps = curves[f"{n}|{method}|{region}"]["steps"]
                cells.append(" / ".join(f"{steps[i]['spearman_abs']:.3f}" for i in picks))
            lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    region_lines = []
    for n in models:
        curve = curves[f"{n}|saliency|recomputed"]
        share = [100 * s["region_voxels"][0] / curve["voxels"] for s in curve["steps"]]
        dice = [s["region_dice"][0] for s in curve["steps"]]
        region_lines.append(f"| {n} | {share[0]:.1f} % | {share[1]:.1f} % ({dice[1]:.2f}) | {min(share[1:]):.1f}–{max(share[1:]):.1f} % | "
                            f"{min(dice[1:]):.2f}–{max(dice[1:]):.2f} |")
    final = {(m, r): [curves[f"{n}|{m}|{r}"]["steps"][-1]["spearman_abs"] for n in models] for m in METHODS for r in TARGET_REGIONS}
    late = {m: [s["spearman_abs"] for n in models for s in curves[f"{n}|{m}|fixed"]["steps"][1:]] for m in METHODS}
    falls = [(1 - curves[f"{n}|{m}|recomputed"]["steps"][1]["spearman_abs"]) / (1 - curves[f"{n}|{m}|recomputed"]["steps"][-1]["spearman_abs"])
             for n in models for m in METHODS]
    first_share = 100 * float(np.mean(falls))
    run = info.get("randomisation", {})
    rel = lambda fig: fig.relative_to(docs).as_posix()  # noqa: E731
    high = lambda m: f"{min(late[m]):.2f}–{max(late[m]):.2f}"  # noqa: E731
    return f"""## Figure 9 analogue: cascading randomisation

Every parameterised layer of the eval-mode network (convolutions and batch norms; the
training-only deep-supervision heads of the MSS models excluded) is re-initialised in turn from
the output towards the input (`esegeta_monai.evaluation.randomisation.explainer_randomisation`, seed {info['seed']}), the map
of the bundle sample recomputed after each step and compared with the original one. The target
`{TARGET}` has a region (the voxels predicted as vessel), and it is run twice:

- **fixed region** (the default of `esegeta evaluate`): the region of the trained model's
  prediction is held for every randomised model, so every step explains the same function of
  the output (the vessel logits summed over the same voxels), as Adebayo et al. compare the same
  class; the logits are the randomised model's;
- **recomputed region** (the paper's set-up, and this study's before issue 14): the region is each
  randomised model's own prediction — it jumps as soon as the last layer is random, and the maps
  then explain a different region.

{"Randomisation part rerun alone: `" + run["command"] + "` — " + format(run["minutes"], ".1f") + " min on " + run["machine"] + "; the other sections come from the full run above." if run.get("only") else f"This part took {run.get('minutes', float('nan')):.1f} min of the run" + (f" ({info['compute_minutes']['randomisation']:.1f} min of compute, timed by the runs that computed it)" if "randomisation" in info.get("compute_minutes", {}) else "") + "."}{seeds_text}

Size of the recomputed region (share of the sample's voxels; Dice overlap with the trained
model's region in parentheses); the fixed region keeps the trained model's size and Dice 1:

| model | trained | after the first step (Dice) | range over all steps | Dice range over all steps |
|---|---|---|---|---|
{chr(10).join(region_lines)}

Maps are shown as maximum projections of |map| along S, each scaled to its own maximum; the grey
curve is the region's Dice overlap with the trained model's region.

![cascading randomisation with the region fixed]({rel(figs[0])})

![cascading randomisation with the region recomputed]({rel(figs[1])})

![cascading randomisation, the three models, both regions]({rel(figs[2])})

Rank correlation of |maps| with the original map after the first step (`{first[1]['layer']}`, the
network's last convolution), half-way ({n_layers // 2} of {n_layers} layers) and after the last step.

Fixed region:

{table("fixed")}

Recomputed region:

{table("recomputed")}

**Reading.** With the region recomputed, the rank correlation falls to
{min(min(final[(m, "recomputed")]) for m in METHODS):.2f}–{max(max(final[(m, "recomputed")]) for m in METHODS):.2f} after the last
step for every method — but {first_share:.0f} % of that fall (mean over methods and models) comes at the
first step, with the region's jump, so it measures the change of what is explained as much as the
weights' influence on the map. With
the region fixed, |saliency| keeps a rank correlation of {high("saliency")} over all steps of the three
models and |guided backpropagation| {high("guided_backprop")}, deconvolution {high("deconvolution")}. A high
fixed-region correlation does not mean these maps pass the randomisation test: it is Adebayo et
al.'s finding that saliency-type maps of ReLU networks depend only weakly on the upper layers'
weights — their structure comes largely from the input and the lower layers — so these maps say little about what the trained model learned beyond its early filters. The
recomputed variant hides this behind the moving target.
"""


def discussion(rows: list[dict], info: dict, stats: dict) -> str:
    """The limits paragraph; every statement about the results is computed from them."""
    models = [m for m, _ in MODELS]
    dices = [float(np.mean(info["heldout_dice"][n])) for n in models]
    zero = {n: np.mean([r["infidelity_zero_map"] for r in rows if r["model"] == n and r["method"] == "saliency"]) for n in models}
    zero_order = sorted(models, key=zero.get)
    raw = summary(rows, "infidelity")
    same_order = [m for m in METHODS if sorted(models, key=lambda n: raw[m][n][0]) == zero_order]
    rel = [r["relative_infidelity"] for r in rows]
    rel_norm = [r["relative_infidelity_normalized"] for r in rows]
    n_seeds = info.get("training_seeds", {}).get("n", 1)
    within = []  # metric x method cells whose spread of model means is below the largest seed-to-seed sd
    for key in ("infidelity", "sensitivity"):
        for method, per_model in stats["tables"][key].items():
            means = [per_model[n]["mean"] for n in models]
            sds = [per_model[n]["seed_sd"] for n in models]
            if n_seeds > 1 and max(means) - min(means) < np.nanmax(sds):
                within.append(f"{METRICS[key]} of {METHODS[method]}")
    comparisons = [c for key in ("infidelity", "sensitivity") for c in stats["comparisons"][key]]
    beyond = sum(c["verdict"] == "beyond seed variation" for c in comparisons)
    some = sum(0 < c["significant_seeds"] for c in comparisons) - beyond
    flips = sum(not c["same_sign"] for c in comparisons)
    lines = ["Reasons the result can differ from the paper's, and limits of this reproduction:", ""]
    lines.append(
        f"- **Synthetic data, small models.** The phantoms are clean, bright tubes on a smooth background and the "
        f"three models share one 151 k-parameter UNet backbone; their held-out Dice is {min(dices):.3f}–{max(dices):.3f}, "
        "so there is little for deep supervision or deformation to improve. DS6's "
        "models were trained on real 7T TOF-MRA with few labelled volumes, where augmentation matters more.")
    lines.append(
        f"- **Raw infidelity measures the model as much as the map.** With noise of std 0.1 on every voxel the summed "
        f"vessel logit changes a lot, and the maps (unnormalised gradients) predict little of that change: raw infidelity "
        f"over an all-zero map's is {min(rel):.3f}–{max(rel):.3f} here ({min(rel_norm):.3f}–{max(rel_norm):.3f} with the "
        f"best scaling of each map). The models' own output variation `E[(T(x) − T(x − I))²]` orders them "
        f"{' < '.join(zero_order)}, and raw infidelity orders them the same way for {len(same_order)} of {len(METHODS)} "
        "methods. Comparing models by raw infidelity, as the paper's Table 1 does, compares their output scales "
        "(logit magnitudes, predicted vessel volume) as much as their explanations; the relative tables remove that factor.")
    if n_seeds > 1:
        lines.append(
            f"- **Seeds and samples.** {len(info['images'])} images, {info['n_inf']} and {info['n_sens']} perturbations per image, "
            f"{n_seeds} training seeds per model. Of the {len(comparisons)} model-to-model differences of the infidelity and "
            f"sensitivity tables, {beyond} are beyond seed-to-seed variation, {some} are significant in some seeds only, and "
            f"{flips} change sign between seeds; for {len(within)} of {2 * len(METHODS)} metric × method cells the spread of "
            "the three models' means is smaller than the largest seed-to-seed sd" + (f" ({', '.join(within)})" if within else "")
            + f". With {n_seeds} seeds the seed part of the bootstrap has few distinct resamples and underestimates the "
            f"seed variance (by about {n_seeds - 1}/{n_seeds}), so the intervals are optimistic; the per-seed tests do not "
            "depend on it.")
    else:
        lines.append(
            f"- **Small samples.** {len(info['images'])} images, {info['n_inf']} and {info['n_sens']} perturbations per image, one "
            "training run per model: differences between models are tested over images only, and one training seed per "
            "model says nothing about run-to-run variance.")
    lines.append(
        "- **Details that differ from the paper**: the target is the summed logit over the predicted vessel voxels (the "
        "paper's argmax wrapper) and maps are exact through sliding windows (the paper explained patches); the elastic "
        "deformation is mild (sigma 5–7 voxels, magnitude 100–200: offsets of about 1 voxel, at most 3–4).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phantoms", type=int, default=11, help="held-out phantoms besides the bundle sample (default 11: 12 images)")
    ap.add_argument("--training-seeds", type=int, default=3,
                    help="training seeds per model (default 3): 0 is the shipped bundle, k >= 1 a copy trained under CACHE/models (needs --cache)")
    ap.add_argument("--randomisation-seeds", type=int,
                    help="how many of the training seeds (0, 1, ...) get the cascading randomisation (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at a time (default 1; each uses one thread; on 2 cores two at once each ran "
                         "about 2x slower, so little is saved there)")
    ap.add_argument("--infidelity-samples", type=int, default=16)
    ap.add_argument("--sensitivity-samples", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap draws of every interval (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible numbers)")
    ap.add_argument("--docs", default="docs", help="folder of paper_study.md/json and figures/ (default docs)")
    ap.add_argument("--models", nargs=3, metavar="BUNDLE", help="other bundle folders for the three models (default: the demo bundles)")
    ap.add_argument("--cache", help="folder of the trained seed copies (CACHE/models) and of each model's results (keyed by "
                                    "weights, image and settings): a killed run restarts where it stopped; required with --training-seeds > 1")
    ap.add_argument("--quick", action="store_true", help="smoke run: seeds k >= 1 trained with a tiny config, one 32³ phantom (roi 32³), "
                                                         "4 and 2 samples; writes under temporary folders (cache too, unless --cache)")
    ap.add_argument("--only", choices=("randomisation",), help="rerun only this part; the rest is read from DOCS/paper_study.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = Path(args.docs) / "paper_study.json"  # what --only keeps: the last full run's tables
    window_override = None
    if args.quick:
        args.infidelity_samples, args.sensitivity_samples = 4, 2
        args.docs = tempfile.mkdtemp(prefix="paper_study_")
        window_override = {"roi_size": (32, 32, 32)}
        if args.cache is None and args.training_seeds > 1:
            args.cache = tempfile.mkdtemp(prefix="paper_study_cache_")
    if args.training_seeds < 1:
        ap.error("--training-seeds must be >= 1")
    start = time.monotonic()
    log = lambda message: print(message, flush=True)  # noqa: E731
    paths = [Path(p) for p in (args.models or [ROOT / path for _, path in MODELS])]
    names = [name for name, _ in MODELS]
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/paper_study.py", *(sys.argv[1:] if argv is None else argv)])
    cache = Path(args.cache) if args.cache else None
    if args.quick and cache is not None:  # tiny trainings never replace a full run's seed copies
        cache = cache / "quick"
    previous = json.loads(source.read_text()) if args.only else None
    n_seeds = previous["info"].get("training_seeds", {}).get("n", 1) if previous else args.training_seeds
    n_rand = min(n_seeds, args.randomisation_seeds or n_seeds)
    if (n_rand if args.only else n_seeds) > 1 and cache is None:
        ap.error("--cache is required with --training-seeds > 1: the trained copies and every result are kept there")
    if not args.quick and not args.only:
        estimate = cost_estimate([training_seconds(p) for p in paths], n_seeds, args.phantoms + 1, n_rand, args.jobs)
        log(f"estimated time from nothing on 2 cores, 1 torch thread (measurements: the module docstring): training {estimate['training']:.0f} min "
            f"({n_seeds - 1} seed(s) x {len(paths)} models, {args.jobs} at a time), metrics {estimate['metrics']:.0f} min "
            f"({len(paths)} models x {n_seeds} seeds x {args.phantoms + 1} images), randomisation {estimate['randomisation']:.0f} min "
            f"({n_rand} seed(s)): total {estimate['total'] / 60:.1f} h; cached parts are skipped")
    folders = seed_bundles(paths, n_rand if args.only else n_seeds, cache, log, QUICK_TRAINING if args.quick else None, args.jobs)
    by_seed = [[(name, load_bundle(folder)) for name, folder in zip(names, row)] for row in folders]
    curves_by_seed = {}
    with tempfile.TemporaryDirectory(prefix="paper_study_images_") as workdir:
        if args.quick:  # one small phantom (one 32³ window) for everything
            images = study_images(Path(workdir), None, 1, shape=(32, 32, 32))
        else:
            images = study_images(Path(workdir), by_seed[0][0][1].samples[0], 0 if args.only else args.phantoms)
        if args.only:  # the tables and setup of the last full run, the randomisation part anew
            rows, info = previous["rows"], previous["info"]
        else:
            rows = []
            for k, models in enumerate(by_seed):
                log(f"-- metrics, training seed {k}")
                rows += run_metrics(models, images, args.infidelity_samples, args.sensitivity_samples, args.seed, log, cache,
                                    training_seed=k, window=window_override)
        started = time.monotonic()
        for k in range(n_rand):
            log(f"-- randomisation, training seed {k}")
            curves_by_seed[k] = run_randomisation(by_seed[k], images[0]["image"], args.seed, log, cache, window_override=window_override)
        randomisation_minutes = (time.monotonic() - started) / 60
    if args.only:
        info["randomisation"] = {"only": True, "command": command, "machine": machine(), "minutes": randomisation_minutes,
                                 "compute_minutes": COMPUTE_SECONDS.get("randomisation", 0.0) / 60}
    else:
        heldout, minutes = {}, {}
        for j, name in enumerate(names):
            heldout[name] = [json.loads((row[j] / "docs" / "training_metrics.json").read_text())["heldout_dice_mean"] for row in folders]
            runs = [row[j] / "docs" / "study_training.json" for row in folders[1:]]
            minutes[name] = [json.loads(r.read_text())["seconds"] / 60 for r in runs if r.is_file()]
        bases = {int(yaml.safe_load((p / "configs" / "train.yaml").read_text())["seed"]) for p in paths}
        info = {"command": command, "machine": machine(), "minutes": (time.monotonic() - start) / 60, "images": [i["name"] for i in images],
                "n_inf": args.infidelity_samples, "n_sens": args.sensitivity_samples, "seed": args.seed, "heldout_dice": heldout,
                "quick": args.quick, "window_override": window_override,
                "training_seeds": {"n": n_seeds, "base": bases.pop() if len(bases) == 1 else "each bundle's own", "quick": args.quick,
                                   "folders": [[str(f) for f in row] for row in folders], "minutes": minutes, "randomised": n_rand},
                "randomisation": {"only": False, "minutes": randomisation_minutes, "seeds": n_rand},
                "compute_minutes": {"training copies": sum(sum(m) for m in minutes.values()),
                                    **{part: seconds / 60 for part, seconds in COMPUTE_SECONDS.items()}}}
    stats = {"n_boot": args.bootstrap,
             "tables": {key: seed_table(rows, key, names, METHODS, args.bootstrap, args.seed) for key in METRICS},
             "comparisons": {key: compare_models(rows, key, names, METHODS, args.bootstrap, args.seed) for key in METRICS}}
    figs = figures(curves_by_seed[0], docs / "figures")
    record = {"info": info, "rows": rows, "statistics": stats,
              "randomisation": {str(k): {key: v["steps"] for key, v in curves.items()} for k, curves in curves_by_seed.items()},
              "ordering": {key: ordering(rows, key) for key in ("infidelity", "sensitivity", "relative_infidelity")}}
    atomic_write_text(docs / "paper_study.json", json.dumps(record, indent=1) + "\n")
    write_markdown(docs / "paper_study.md", rows, curves_by_seed, figs, info, stats)
    for fig in figs:
        log(f"wrote {fig} ({fig.stat().st_size // 1024} KB)")
    log(f"wrote {docs / 'paper_study.md'} and paper_study.json in {(time.monotonic() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
