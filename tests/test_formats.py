"""Input formats (NIfTI, MHA, NRRD, DICOM series, PNG) and output formats (NIfTI, NRRD, PNG):
maps must have the input's geometry as SimpleITK reads it, and their values where they belong."""

from __future__ import annotations

import locale
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityd, Spacingd

from esegeta_monai.apps.cli import main
from esegeta_monai.errors import InputError, OutputError
from esegeta_monai.monai.io import load_for_explanation, save_attribution
from esegeta_monai.monai.io.png import read_png_map

from tiny_bundle import make_tiny_bundle  # noqa: E402

SIZE = (20, 18, 12)  # SimpleITK (x, y, z)
SPACING = (0.8, 0.8, 1.2)
ORIGIN = (12.5, -30.0, 40.0)


def _direction() -> tuple:
    """LPS-based (SimpleITK's identity is LPS), rotated 15° about z: neither RAS nor axis-aligned."""
    th = np.deg2rad(15.0)
    return tuple(np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]).ravel())


def _scan() -> sitk.Image:
    """An off-centre blob on a ramp (asymmetric, so a flip or swap shows), int16, LPS geometry."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in SIZE[::-1]], indexing="ij")
    blob = np.exp(-((x - 5) ** 2 + (y - 12) ** 2 + (z - 4) ** 2) / 18.0)
    image = sitk.GetImageFromArray((1000 * blob + 20 * x + 5 * z).astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(_direction())
    return image


def _write_dicom_series(image: sitk.Image, folder: Path) -> Path:
    """One DICOM file per slice with the tags GDCM needs to rebuild the volume's geometry.

    GDCM's writer leaves the C locale set (Python's default text encoding becomes ASCII for
    every later test): the locale is put back afterwards.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(image, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image: sitk.Image, folder: Path) -> Path:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    series = [
        ("0008|0021", "20240101"), ("0008|0031", "120000"), ("0008|0060", "MR"), ("0008|103e", "esegeta test"),
        ("0020|000d", "1.2.826.0.1.3680043.2.1125.1.1"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
        ("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
    ]
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in series:
            slice_k.SetMetaData(tag, value)
        slice_k.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        slice_k.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


def _read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _assert_same_geometry(reference: sitk.Image, written: sitk.Image) -> None:
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-5)


def _corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _preprocessing() -> Compose:
    """Reorients and resamples: the map must be brought back through both."""
    return Compose([
        LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=1.0, mode="bilinear"), ScaleIntensityd("image"),
    ])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    image = _scan()
    paths = {}
    for suffix in ("nii.gz", "mha", "nrrd"):
        paths[suffix] = folder / f"scan.{suffix}"
        sitk.WriteImage(image, str(paths[suffix]))
    paths["dicom"] = _write_dicom_series(image, folder / "dicom_series")
    return paths


def test_dicom_series_fixture_has_the_geometry_it_was_made_with(inputs):
    _assert_same_geometry(_scan(), _read(inputs["dicom"]))


@pytest.mark.parametrize("kind", ["nii.gz", "mha", "nrrd", "dicom"])
def test_inputs_load_with_the_geometry_simpleitk_reads(inputs, kind):
    """Every input format gives the same array and RAS affine (MONAI's convention) as the NIfTI."""
    reference = load_for_explanation(inputs["nii.gz"])["image"]
    loaded = load_for_explanation(inputs[kind])["image"]
    assert tuple(loaded.shape) == (1, *SIZE)
    np.testing.assert_allclose(loaded.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(loaded.numpy(), reference.numpy())


@pytest.mark.parametrize("kind", ["nii.gz", "mha", "nrrd", "dicom"])
@pytest.mark.parametrize("writer_format, suffix", [("nifti", ".nii.gz"), ("nrrd", ".nrrd")])
def test_maps_keep_the_input_geometry_through_simpleitk(inputs, tmp_path, kind, writer_format, suffix):
    pre = _preprocessing()
    data = load_for_explanation(inputs[kind], pre, expected_spatial_dims=3)
    x = data["image"]
    assert tuple(x.shape[1:]) != SIZE  # resampled to 1 mm: the inversion has work to do
    out = save_attribution(x**2, data, pre, tmp_path / f"map{suffix}", writer_format=writer_format)
    assert sorted(os.listdir(tmp_path)) == [f"map{suffix}"]  # atomic: no temporary file left
    source, written = _read(inputs[kind]), sitk.ReadImage(str(out))
    _assert_same_geometry(source, written)
    values = sitk.GetArrayFromImage(written)
    reference = sitk.GetArrayFromImage(source).astype(np.float64)
    reference = ((reference - reference.min()) / (reference.max() - reference.min())) ** 2
    assert _corr(values, reference) > 0.99  # the values landed where they belong...
    assert _corr(values, reference[:, ::-1, ::-1]) < 0.5  # ...not mirrored


def test_png_input_and_png_map_keep_width_and_height(tmp_path):
    from PIL import Image

    pixels = np.zeros((30, 50), np.uint8)  # 30 rows (height), 50 columns (width)
    pixels[5:10, 35:45] = 200  # a bright patch top right
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    data = load_for_explanation(tmp_path / "photo.png", expected_spatial_dims=2)
    assert tuple(data["image"].shape) == (1, 50, 30)  # MONAI's (x, y)
    signed = data["image"] - 100.0
    out = save_attribution(signed, data, None, tmp_path / "maps" / "map.png", writer_format="png")
    with Image.open(out) as written:
        assert written.size == (50, 30) and written.mode.startswith("I;16")
        assert np.asarray(written)[7, 40] > np.asarray(written)[20, 10]  # the patch stays top right
    np.testing.assert_allclose(read_png_map(out), signed[0].numpy(), atol=200 / 65535 * 1.01)
    assert sorted(os.listdir(out.parent)) == ["map.png"]


def test_png_output_refuses_3d_maps_and_leaves_nothing(inputs, tmp_path):
    data = load_for_explanation(inputs["mha"])
    with pytest.raises(OutputError, match="PNG holds one 2D map.*--format nifti"):
        save_attribution(data["image"], data, None, tmp_path / "map.png", writer_format="png")
    assert os.listdir(tmp_path) == []


def test_folder_without_dicom_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no DICOM series"):
        load_for_explanation(tmp_path / "empty")


@pytest.mark.parametrize("kind, fmt", [("mha", "nrrd"), ("dicom", "nifti")])
def test_cli_explains_mha_and_dicom_series(inputs, tmp_path, kind, fmt):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    image = str(inputs[kind]) + ("/" if kind == "dicom" else "")
    out = tmp_path / "out"
    code = main(["explain", "--bundle", str(bundle), "--image", image, "--methods", "saliency",
                 "--target", "argmax:1", "--out", str(out), "--format", fmt, "--device", "cpu", "--no-progress"])
    assert code == 0
    stem = "dicom_series" if kind == "dicom" else "scan"
    suffix = {"nifti": ".nii.gz", "nrrd": ".nrrd"}[fmt]
    written = sitk.ReadImage(str(out / stem / f"saliency_argmax1{suffix}"))
    _assert_same_geometry(_read(inputs[kind]), written)
    assert float(np.abs(sitk.GetArrayFromImage(written)).sum()) > 0


def test_cli_refuses_an_unknown_format(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--bundle", "x", "--format", "tiff"])
    assert "invalid choice" in capsys.readouterr().err


def test_sitk_reader_keeps_vector_pixels_as_channels(tmp_path):
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.mha"))
    loaded = load_for_explanation(tmp_path / "rgb.mha")["image"]
    assert tuple(loaded.shape) == (3, 5, 4)
    assert torch.equal(loaded[:, 1, 2], torch.tensor([2 * 15 + 1 * 3 + 0.0, 2 * 15 + 1 * 3 + 1, 2 * 15 + 1 * 3 + 2]))
