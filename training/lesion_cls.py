"""The training steps the lesion classification demos share (2D: ``train_lesion2d``, 3D: ``train_lesion3d``).

A demo is described by a :class:`LesionDemo` (its generator, sample writer and augmentation);
:func:`run_demo` then

1. generates the training images (a lesion in every even seed, none in odd ones) and passes
   them through the bundle's own preprocessing after its loading transforms;
2. trains the network built from ``network_def`` of the bundle's inference config with
   cross-entropy, Adam and cosine annealing, on random augmented batches;
3. evaluates accuracy and ROC AUC (``monai.metrics.compute_roc_auc``) on held-out seeds;
4. saves ``models/model.pt`` (a plain ``state_dict``), writes the bundle samples (each with its
   ``_mask`` file) and classifies them with the bundle's own inference config (as
   ``python -m monai.bundle run`` does);
5. prints the metrics and writes them to ``docs/training_metrics.json``.

``--eval-only`` skips training and evaluates the saved weights.

Example:
    >>> import numpy as np, torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> images, labels = np.zeros((6, 1, 2, 2), np.float32), np.array([0, 1] * 3)
    >>> images[labels == 1] = 1.0
    >>> _ = train(net, images, labels, {"iterations": 60, "batch_size": 4, "lr": 0.05}, seed=0, log=lambda m: None)
    >>> evaluate(net, images, labels)["accuracy"]
    1.0
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from esegeta_monai.monai.io.images import loading_prefix_length
from training.train import build_network, inference_parser, log, run_bundle_config, start_training, write_training_metrics

__all__ = ["LesionDemo", "preprocess_arrays", "make_dataset", "train", "evaluate", "classify_samples",
           "sample_affine", "run_demo"]

#: ``augment(batch, rng)`` → the augmented batch, same shape (``rng``: the training's generator).
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class LesionDemo:
    """What differs between the lesion demos.

    Attributes:
        command: the command that reproduces the bundle (recorded in the metrics).
        config_hint: the training config's path, for ``--help``.
        make: ``make(shape, seed=, lesion=, **options)`` → ``(image, mask)``.
        write_sample: ``write_sample(path, shape, seed=, lesion=, affine=, **options)`` → ``(image_path, mask_path)``.
        augmentation: ``augmentation(augment_config, seed)`` → an :data:`Augment`.
    """

    command: str
    config_hint: str
    make: Callable
    write_sample: Callable
    augmentation: Callable[[dict, int], Augment]


def preprocess_arrays(preprocessing, images, image_key: str = "image") -> np.ndarray:
    """``(N, 1, *spatial)`` float32: each image through ``preprocessing`` minus its loaders.

    Example:
        >>> from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd
        >>> pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image")])
        >>> out = preprocess_arrays(pre, [np.arange(6.0).reshape(2, 3)])
        >>> out.shape, float(out.max())
        ((1, 1, 2, 3), 1.0)
    """
    from monai.data import MetaTensor

    start = loading_prefix_length(preprocessing)
    out = []
    for image in images:
        data = {image_key: MetaTensor(torch.as_tensor(np.asarray(image, dtype=np.float32))[None])}
        out.append(np.asarray(preprocessing(data, start=start)[image_key], dtype=np.float32))
    return np.stack(out)


def make_dataset(make: Callable, seed_start: int, n: int, data_cfg: dict, preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Images ``make(shape, seed=s, lesion=s % 2 == 0)`` of seeds ``seed_start .. seed_start + n - 1``,
    preprocessed, and their labels (1: lesion)."""
    options = dict(data_cfg.get("lesion_options") or {})
    seeds = range(int(seed_start), int(seed_start) + int(n))
    labels = np.array([int(s % 2 == 0) for s in seeds], dtype=np.int64)
    images = [make(tuple(data_cfg["shape"]), seed=s, lesion=bool(y), **options)[0] for s, y in zip(seeds, labels)]
    return preprocess_arrays(preprocessing, images), labels


def train(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, tcfg: dict, seed: int, log=print,
          augment: Augment | None = None) -> dict:
    """Cross-entropy training on random (augmented) batches; returns the final loss and the time."""
    rng = np.random.default_rng(seed + 1)
    iters, bs = int(tcfg["iterations"]), int(tcfg["batch_size"])
    opt = torch.optim.Adam(net.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg.get("weight_decay", 0.0)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=float(tcfg["lr"]) * 0.01)
    log_every = int(tcfg.get("log_every", 100))
    net.train()
    t0, running, last = time.time(), [], float("nan")
    for it in range(1, iters + 1):
        index = rng.integers(len(images), size=bs)
        batch = images[index] if augment is None else augment(images[index], rng)
        x, y = torch.from_numpy(np.ascontiguousarray(batch)), torch.from_numpy(labels[index])
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if it % log_every == 0 or it == iters:
            last = float(np.mean(running))
            log(f"iter {it:5d}/{iters}  loss {last:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:6.1f}s")
            running = []
    return {"final_loss": last, "train_time_s": round(time.time() - t0, 1)}


def evaluate(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 100) -> dict:
    """Accuracy (argmax) and ROC AUC of the lesion probability; ``wrong``: the indices of the errors."""
    from monai.metrics import compute_roc_auc

    net.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(net(torch.from_numpy(images[i:i + batch_size])), 1)
                           for i in range(0, len(images), batch_size)])
    y = torch.from_numpy(labels)
    accuracy = float((probs.argmax(1) == y).float().mean())
    auc = float(compute_roc_auc(probs[:, 1], y))
    wrong = torch.nonzero(probs.argmax(1) != y).flatten().tolist()
    return {"accuracy": round(accuracy, 4), "auc": round(auc, 4), "n": len(labels),
            "n_lesion": int(labels.sum()), "errors": len(wrong), "wrong": wrong}


def classify_samples(bundle_root: Path, cfg: dict, paths: list[str]) -> dict[str, float]:
    """Lesion probability of each file, from the bundle's own inference config (its predictions.csv)."""
    out = tempfile.mkdtemp(prefix="lesion_cls_eval_")
    try:
        run_bundle_config(bundle_root, cfg, {"output_dir": out, "datalist": [str(p) for p in paths]})
        with open(Path(out) / "predictions.csv") as f:
            return {Path(row[0]).name: float(row[2]) for row in csv.reader(f)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def sample_affine(sample: dict) -> np.ndarray | None:
    """The NIfTI affine of a ``samples`` entry: ``diag(spacing_signs * |spacing|)`` and ``origin``; ``None``
    without ``spacing``.

    Example:
        >>> sample_affine({"spacing": [0.7, 0.7], "spacing_signs": [-1, 1], "origin": [2.0, 0.0, 0.0]})[:3].tolist()
        [[-0.7, 0.0, 0.0, 2.0], [0.0, 0.7, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """
    if "spacing" not in sample:
        return None
    spacing = np.abs(np.asarray(sample["spacing"], float))
    affine = np.eye(4)
    affine[:len(spacing), :len(spacing)] = np.diag(np.asarray(sample.get("spacing_signs", [1] * len(spacing)), float) * spacing)
    affine[:3, 3] = sample.get("origin", [0.0, 0.0, 0.0])
    return affine


def _write_samples(demo: LesionDemo, bundle_root: Path, cfg: dict) -> list[dict]:
    samples = []
    for s in cfg.get("samples") or []:
        path, _ = demo.write_sample(bundle_root / s["path"], tuple(cfg["data"]["shape"]), seed=int(s["seed"]),
                                    lesion=bool(s["lesion"]), affine=sample_affine(s), **(cfg["data"].get("lesion_options") or {}))
        samples.append({"path": s["path"], "seed": int(s["seed"]), "lesion": bool(s["lesion"]), "file": path})
    return samples


def run_demo(demo: LesionDemo, argv, description: str) -> dict:
    """Train (unless ``--eval-only``), evaluate, write the samples and the metrics of one lesion demo."""
    args, cfg, bundle_root, seed = start_training(argv, description, demo.config_hint)

    parser = inference_parser(bundle_root, cfg)
    preprocessing = parser.get_parsed_content("preprocessing")
    data_cfg = cfg["data"]
    out_cfg = cfg.get("outputs") or {}
    model_path = bundle_root / out_cfg.get("model", "models/model.pt")
    metrics_path = bundle_root / out_cfg.get("metrics", "docs/training_metrics.json")

    net = build_network(parser)
    result: dict = {"parameters": sum(p.numel() for p in net.parameters())}
    if args.eval_only:
        net.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    else:
        t0 = time.time()
        images, labels = make_dataset(demo.make, data_cfg["train_seed_start"], data_cfg["n_train"], data_cfg, preprocessing)
        result["data_time_s"] = round(time.time() - t0, 1)
        log(f"generated {len(images)} training images in {result['data_time_s']}s; network: {result['parameters']} parameters")
        augment = demo.augmentation(cfg["training"].get("augment") or {}, seed)
        result.update(train(net, images, labels, cfg["training"], seed, log=log, augment=augment))
        model_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), model_path)
        log(f"saved {model_path}")

    val_images, val_labels = make_dataset(demo.make, data_cfg["val_seed_start"], data_cfg["n_val"], data_cfg, preprocessing)
    result["heldout"] = evaluate(net, val_images, val_labels)
    first = int(data_cfg["val_seed_start"])
    result["heldout"]["seeds"] = [first, first + int(data_cfg["n_val"]) - 1]
    result["heldout"]["error_seeds"] = [first + i for i in result["heldout"].pop("wrong")]
    log(f"held-out ({result['heldout']['n']} images): accuracy {result['heldout']['accuracy']:.4f}, AUC {result['heldout']['auc']:.4f}")

    samples = _write_samples(demo, bundle_root, cfg)
    probabilities = classify_samples(bundle_root, cfg, [s["file"] for s in samples])
    for s in samples:
        s["p_lesion"] = round(probabilities[Path(s.pop("file")).name], 4)
        s["correct"] = (s["p_lesion"] > 0.5) == s["lesion"]
        log(f"sample {s['path']}: lesion {s['lesion']}, bundle inference p(lesion) {s['p_lesion']:.4f}")
    result["samples"] = samples

    if not args.eval_only:
        write_training_metrics(result, cfg, demo.command, metrics_path)
    print(json.dumps({"heldout_accuracy": result["heldout"]["accuracy"], "heldout_auc": result["heldout"]["auc"]}))
    return result
