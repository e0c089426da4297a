"""Synthetic data and training scripts of the demo bundles (not part of the installed package).

Run from the repository root, e.g. ``python -m training.train --config bundles/vessel_mra_demo/configs/train.yaml``.

- ``phantoms`` and ``train``: TOF-MRA-like vessel phantoms, ``bundles/vessel_mra_demo`` (3D UNet)
  and the two deep-supervision bundles;
- ``lesions2d`` and ``train_lesion2d``: 2D lesion / no-lesion images, ``bundles/lesion_cls_2d_demo``
  (2D DenseNet classifier);
- ``lesions3d`` and ``train_lesion3d``: 3D lesion / no-lesion volumes, ``bundles/lesion_cls_3d_demo``
  (3D DenseNet classifier);
- ``lesions`` and ``lesion_cls``: what the two lesion demos share (rendering, NIfTI files; data,
  training, evaluation and the bundle's own inference);
- ``synthetic``: the random fields all the generators share (texture, bias field).
"""
