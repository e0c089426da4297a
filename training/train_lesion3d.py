"""Train the ``lesion_cls_3d_demo`` bundle's 3D classifier on synthetic lesion volumes.

Run from the repository root::

    python -m training.train_lesion3d --config bundles/lesion_cls_3d_demo/configs/train.yaml

The script is fully seeded.  It

1. generates the training volumes (:func:`training.lesions3d.make_lesion_volume`, a
   lesion in every even seed, none in odd ones) and passes them through the bundle's own
   preprocessing after its loading transforms (``Orientationd``, ``Resized``, ``ScaleIntensityd``…);
2. trains ``monai.networks.nets.DenseNet`` (3D, built from ``network_def`` of ``inference.yaml``)
   with cross-entropy, Adam and cosine annealing, on random batches augmented by MONAI's
   ``RandFlipd`` (each axis) and ``RandRotate90d`` (each plane);
3. evaluates accuracy and ROC AUC (``monai.metrics.compute_roc_auc``) on held-out seeds;
4. saves ``models/model.pt`` (a plain ``state_dict``), writes the bundle samples (NIfTI with
   non-identity affines, each with its ``_mask`` file) and classifies them with the bundle's
   own inference config (as ``python -m monai.bundle run`` does);
5. prints the metrics and writes them to ``docs/training_metrics.json``.

``--eval-only`` skips training and evaluates the saved weights.  The steps are those of every
lesion demo (:mod:`training.lesion_cls`); this module adds the 3D generator and augmentation.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from training.lesion_cls import LesionDemo, run_demo
from training.lesions3d import make_lesion_volume, write_lesion_volume

__all__ = ["augmentation", "DEMO", "main"]


def augmentation(aug_cfg: dict, seed: int):
    """``augment(batch, rng)`` for :func:`training.lesion_cls.train`: MONAI ``RandFlipd`` on each spatial
    axis (``flip_prob``) then ``RandRotate90d`` in each plane (``rotate90_prob``), applied to each
    ``(1, X, Y, Z)`` volume of the batch; the transforms draw from their own state (``seed + 2``), not
    from ``rng``. The flips and quarter turns are symmetries of the cube, so no voxel is interpolated.

    Example:
        >>> augment = augmentation({"flip_prob": 1.0, "rotate90_prob": 0.0}, seed=0)
        >>> batch = np.arange(16.0, dtype=np.float32).reshape(2, 1, 2, 2, 2)
        >>> out = augment(batch, None)
        >>> out.shape, bool((out == batch[:, :, ::-1, ::-1, ::-1]).all())
        ((2, 1, 2, 2, 2), True)
    """
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    flip, turn = float(aug_cfg.get("flip_prob", 0.5)), float(aug_cfg.get("rotate90_prob", 0.5))
    transforms = Compose([
        *[RandFlipd("image", prob=flip, spatial_axis=axis) for axis in (0, 1, 2)],
        *[RandRotate90d("image", prob=turn, max_k=3, spatial_axes=plane) for plane in ((0, 1), (1, 2), (0, 2))],
    ])
    transforms.set_random_state(seed=seed + 2)

    def augment(batch: np.ndarray, rng) -> np.ndarray:
        return np.stack([np.asarray(transforms({"image": torch.from_numpy(np.ascontiguousarray(v))})["image"]) for v in batch])

    return augment


DEMO = LesionDemo(
    command="python -m training.train_lesion3d --config bundles/lesion_cls_3d_demo/configs/train.yaml",
    config_hint="bundles/lesion_cls_3d_demo/configs/train.yaml",
    make=make_lesion_volume,
    write_sample=write_lesion_volume,
    augmentation=augmentation,
)


def main(argv=None) -> dict:
    return run_demo(DEMO, argv, __doc__.split("\n")[0])


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
