"""Demo material: synthetic data and the training scripts of the demo bundles.

- ``phantoms`` and ``train``: TOF-MRA-like vessel phantoms, ``bundles/vessel_mra_demo`` (3D UNet);
- ``lesions2d`` and ``train_lesion2d``: 2D lesion / no-lesion images, ``bundles/lesion_cls_2d_demo``
  (2D DenseNet classifier);
- ``synthetic``: the random fields both generators share (texture, bias field).
"""
