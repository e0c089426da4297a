"""Reading images for explanation and writing aligned attribution maps.

- :func:`load_for_explanation`: a file through a bundle's preprocessing, checked (NIfTI header
  geometry, shape, channels, NaN), as a ``MetaTensor`` that remembers its transforms and carries
  in ``meta["esegeta_warnings"]`` (:data:`WARNINGS_KEY`) what a record should say about the input;
- :func:`save_attribution`: a map on the preprocessed grid, inverted back to the file's grid
  and written atomically as float32 NIfTI (or NRRD) with the input's affine and shape (checked
  before and after writing), or for 2D maps as a 16-bit PNG; a map on a coarser grid of its own
  (``resolution="layer"``) is written on that grid with its own affine;
- :mod:`~esegeta_monai.monai.io.geometry`: what nibabel, MONAI and ITK each read from a broken
  or inconsistent NIfTI header, and the checks that follow nibabel;
- :mod:`~esegeta_monai.monai.io.masks`: mask and label files on the network's grid (resampled
  through the affines, refused when they do not belong to the image);
- :func:`write_map`: an array and an affine, written atomically (NIfTI, NRRD, PNG);
- :func:`check_output_dir`: an output folder that exists and is writable;
- :class:`SimpleITKReader`: MHA/MHD, NRRD and DICOM series (a folder) for MONAI's
  ``LoadImage(d)``, registered as its last-resort reader when this package is imported.

Inputs: NIfTI (MONAI ``NibabelReader``), PNG/JPEG (``PILReader``), MHA/MHD, NRRD, DICOM files
and series (``ITKReader``/``NrrdReader``/``PydicomReader`` when installed, else SimpleITK).
Outputs: NIfTI, NRRD, PNG (2D).

Example:
    >>> from esegeta_monai.monai.io import load_for_explanation, save_attribution  # doctest: +SKIP
    >>> data = load_for_explanation("scan.nii.gz", bundle.preprocessing)  # doctest: +SKIP
    >>> save_attribution(attr, data, bundle.preprocessing, "out/saliency.nii.gz")  # doctest: +SKIP
"""

from esegeta_monai.monai.io.readers import SimpleITKReader, register_simpleitk_reader

register_simpleitk_reader()  # before anything builds a LoadImage

from esegeta_monai.monai.io.images import NAN_POLICIES, WARNINGS_KEY, default_preprocessing, load_for_explanation  # noqa: E402
from esegeta_monai.monai.io.nifti import CHANNEL_REDUCTIONS, WRITER_FORMATS, check_output_dir, prediction_labels, save_attribution, write_label_map, write_map  # noqa: E402

__all__ = [
    "load_for_explanation",
    "default_preprocessing",
    "save_attribution",
    "prediction_labels",
    "write_label_map",
    "write_map",
    "check_output_dir",
    "NAN_POLICIES",
    "WARNINGS_KEY",
    "CHANNEL_REDUCTIONS",
    "WRITER_FORMATS",
    "SimpleITKReader",
]
