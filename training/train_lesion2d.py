"""Train the ``lesion_cls_2d_demo`` bundle's 2D classifier on synthetic lesion images.

Run from the repository root::

    python -m training.train_lesion2d --config bundles/lesion_cls_2d_demo/configs/train.yaml

The script is fully seeded.  It

1. generates the training images (:func:`training.lesions2d.make_lesion_image`, a
   lesion in every even seed, none in odd ones) and passes them through the bundle's own
   preprocessing after its loading transforms (``Resized``, ``ScaleIntensityd``…);
2. trains ``monai.networks.nets.DenseNet`` (built from ``network_def`` of ``inference.yaml``)
   with cross-entropy, Adam and cosine annealing, on random batches with random flips and
   transpositions;
3. evaluates accuracy and ROC AUC (``monai.metrics.compute_roc_auc``) on held-out seeds;
4. saves ``models/model.pt`` (a plain ``state_dict``), writes the bundle samples (PNG and
   NIfTI, each with its ``_mask`` file) and classifies them with the bundle's own inference
   config (as ``python -m monai.bundle run`` does);
5. prints the metrics and writes them to ``docs/training_metrics.json``.

``--eval-only`` skips training and evaluates the saved weights.  The steps are those of every
lesion demo (:mod:`training.lesion_cls`); this module adds the 2D generator and augmentation.
"""

from __future__ import annotations

import sys

import numpy as np

from training.lesion_cls import LesionDemo, classify_samples, evaluate, preprocess_arrays, run_demo
from training.lesion_cls import make_dataset as _make_dataset
from training.lesions2d import make_lesion_image, write_lesion_sample

__all__ = ["preprocess_arrays", "make_dataset", "augment", "evaluate", "classify_samples", "DEMO", "main"]


def make_dataset(seed_start: int, n: int, data_cfg: dict, preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Images of seeds ``seed_start .. seed_start + n - 1`` (a lesion in even seeds), preprocessed, and labels."""
    return _make_dataset(make_lesion_image, seed_start, n, data_cfg, preprocessing)


def augment(batch: np.ndarray, rng: np.random.Generator, aug_cfg: dict) -> np.ndarray:
    """Random transposition and flips of each ``(1, X, Y)`` image (the eight symmetries of the square).

    Example:
        >>> out = augment(np.arange(8.0).reshape(2, 1, 2, 2), np.random.default_rng(0), {})
        >>> out.shape, sorted(out[0].ravel().tolist())
        ((2, 1, 2, 2), [0.0, 1.0, 2.0, 3.0])
    """
    out = []
    for img in batch:  # (1, X, Y)
        if aug_cfg.get("transpose", True) and rng.random() < 0.5:
            img = img.transpose(0, 2, 1)
        if aug_cfg.get("flip", True):
            for axis in (1, 2):
                if rng.random() < 0.5:
                    img = np.flip(img, axis)
        out.append(np.ascontiguousarray(img))
    return np.stack(out)


DEMO = LesionDemo(
    command="python -m training.train_lesion2d --config bundles/lesion_cls_2d_demo/configs/train.yaml",
    config_hint="bundles/lesion_cls_2d_demo/configs/train.yaml",
    make=make_lesion_image,
    write_sample=write_lesion_sample,
    augmentation=lambda aug_cfg, seed: lambda batch, rng: augment(batch, rng, aug_cfg),
)


def main(argv=None) -> dict:
    return run_demo(DEMO, argv, __doc__.split("\n")[0])


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
