"""Reading images for explanation and writing aligned attribution maps.

- :func:`load_for_explanation`: a file through a bundle's preprocessing, checked (shape,
  channels, NaN), as a ``MetaTensor`` that remembers its transforms;
- :func:`save_attribution`: a map on the preprocessed grid, inverted back to the file's grid
  and written atomically as float32 NIfTI (or NRRD) with the input's affine;
- :func:`check_output_dir`: an output folder that exists and is writable.

Example:
    >>> from esegeta_monai.io import load_for_explanation, save_attribution  # doctest: +SKIP
    >>> data = load_for_explanation("scan.nii.gz", bundle.preprocessing)  # doctest: +SKIP
    >>> save_attribution(attr, data, bundle.preprocessing, "out/saliency.nii.gz")  # doctest: +SKIP
"""

from esegeta_monai.io.images import NAN_POLICIES, default_preprocessing, load_for_explanation
from esegeta_monai.io.nifti import CHANNEL_REDUCTIONS, WRITER_FORMATS, check_output_dir, save_attribution

__all__ = [
    "load_for_explanation",
    "default_preprocessing",
    "save_attribution",
    "check_output_dir",
    "NAN_POLICIES",
    "CHANNEL_REDUCTIONS",
    "WRITER_FORMATS",
]
