"""Loading images through a preprocessing and writing maps aligned with the input file."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityd, Spacingd

from esegeta_monai.errors import InputError, OutputError
from esegeta_monai.monai.io import check_output_dir, load_for_explanation, save_attribution

from zoo import ZOO  # noqa: E402
SPLEEN_CONFIG = ZOO / "spleen_ct_segmentation" / "configs" / "inference.json"

SHAPE = (24, 20, 16)
SPACING = (0.7, 0.9, 1.6)


def _non_ras_affine() -> np.ndarray:
    """LPS-like axes (x and y flipped), rotated 20° about z, anisotropic spacing, off-origin."""
    th = np.deg2rad(20.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(SPACING)
    affine[:3, 3] = [10.0, -5.0, 3.0]
    return affine


def _volume(affine: np.ndarray) -> np.ndarray:
    """A smooth, asymmetric volume defined in world coordinates (an off-centre blob on a ramp)."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = xyz[6, 5, 4]
    return (np.exp(-((xyz - centre) ** 2).sum(-1) / (2 * 6.0**2)) + 0.01 * xyz[..., 2]).astype(np.float32)


@pytest.fixture()
def scan(tmp_path):
    affine = _non_ras_affine()
    img = _volume(affine)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img, affine), path)
    return path, img, affine


def _preprocessing() -> Compose:
    return Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=1.0, mode="bilinear"),
            ScaleIntensityd("image"),
        ]
    )


def _f(x):
    """The fake attribution: a non-linear function of the (intensity-scaled) image."""
    return x**2


def _corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _check_geometry(out: Path, affine: np.ndarray) -> np.ndarray:
    written = nib.load(str(out))
    assert written.shape == SHAPE
    assert np.abs(written.affine - affine).max() < 1e-4
    assert written.get_data_dtype() == np.float32
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    data = np.asarray(written.dataobj)
    assert np.isfinite(data).all()
    return data


def test_roundtrip_non_ras_is_aligned(scan, tmp_path):
    path, img, affine = scan
    pre = _preprocessing()
    data = load_for_explanation(path, pre, expected_channels=1, expected_spatial_dims=3)
    x = data["image"]
    assert isinstance(x, MetaTensor) and x.shape[0] == 1 and tuple(x.shape[1:]) != SHAPE
    assert len(x.applied_operations) >= 2  # Orientationd and Spacingd recorded

    out = save_attribution(_f(x), data, pre, tmp_path / "maps" / "saliency_argmax1.nii.gz")
    assert out == tmp_path / "maps" / "saliency_argmax1.nii.gz"
    assert sorted(os.listdir(out.parent)) == ["saliency_argmax1.nii.gz"]  # no temporary file left
    written = _check_geometry(out, affine)
    ref = _f((img - img.min()) / (img.max() - img.min()))
    assert _corr(written, ref) > 0.99  # the values landed where they belong...
    assert _corr(written, ref[::-1, ::-1, :]) < 0.5  # ...and not mirrored, as a header-only fix would leave them


@pytest.mark.skipif(not SPLEEN_CONFIG.is_file(), reason="model-zoo configs not available")
def test_roundtrip_with_real_bundle_preprocessing(scan, tmp_path):
    """The spleen bundle's own preprocessing (1.5×1.5×2 mm, intensity window, EnsureTyped) inverts too."""
    path, img, affine = scan
    parser = ConfigParser()
    parser.read_config(str(SPLEEN_CONFIG))
    parser["image_key"] = "image"
    # keep the intensity window where the synthetic volume lives
    parser["preprocessing#transforms#4#a_min"] = float(img.min())
    parser["preprocessing#transforms#4#a_max"] = float(img.max())
    pre = parser.get_parsed_content("preprocessing")
    data = load_for_explanation(path, pre)
    out = save_attribution(data["image"], data, pre, tmp_path / "spleen_map.nii.gz")
    written = _check_geometry(out, affine)
    assert _corr(written, img) > 0.98


def test_no_preprocessing_and_channels_kept(scan, tmp_path):
    path, img, affine = scan
    data = load_for_explanation(path)
    x = data["image"]
    assert tuple(x.shape) == (1, *SHAPE)
    two = torch.cat([x, -2 * x], 0)
    out = save_attribution(two, data, None, tmp_path / "two.nii.gz", channel_reduce="none")
    written = nib.load(str(out))
    assert written.shape == (*SHAPE, 2)
    assert np.abs(written.affine - affine).max() < 1e-4
    np.testing.assert_allclose(np.asarray(written.dataobj)[..., 1], -2 * img, rtol=1e-5, atol=1e-6)
    summed = save_attribution(two, data, None, tmp_path / "sum.nii", channel_reduce="sum")
    np.testing.assert_allclose(np.asarray(nib.load(str(summed)).dataobj), -img, rtol=1e-5, atol=1e-6)


def test_nrrd_output(scan, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    path, img, affine = scan
    pre = _preprocessing()
    data = load_for_explanation(path, pre)
    out = save_attribution(_f(data["image"]), data, pre, tmp_path / "map.nrrd", writer_format="nrrd")
    assert sorted(os.listdir(tmp_path)) == ["map.nrrd", "scan.nii.gz"]
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    assert written.GetSize() == original.GetSize()
    for a, b in [(written.GetSpacing(), original.GetSpacing()), (written.GetOrigin(), original.GetOrigin()),
                 (written.GetDirection(), original.GetDirection())]:
        np.testing.assert_allclose(a, b, atol=1e-4)
    ref = _f((img - img.min()) / (img.max() - img.min()))
    assert _corr(sitk.GetArrayFromImage(written).transpose(2, 1, 0), ref) > 0.99


# ------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.nii.gz: no such file"):
        load_for_explanation(tmp_path / "nope.nii.gz")


def test_corrupt_gzip(scan, tmp_path):
    path, _, _ = scan
    raw = path.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated.nii.gz: cannot read the image") as info:
        load_for_explanation(bad, _preprocessing())
    assert "Fix" in str(info.value)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(InputError, match="garbage.nii.gz: cannot read the image"):
        load_for_explanation(garbage)


def test_4d_instead_of_3d(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match=r"series.nii.gz: .*3 channel\(s\).*expects 1") as info:
        load_for_explanation(path, _preprocessing(), expected_channels=1, expected_spatial_dims=3)
    assert "Fix" in str(info.value)
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), flat)
    with pytest.raises(InputError, match=r"slice.nii.gz: .*2 spatial dimension\(s\).*expects 3"):
        load_for_explanation(flat, expected_spatial_dims=3)


def test_nan_policy(tmp_path, caplog):
    vol = np.ones((8, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    vol[4, 4, 4] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    with pytest.raises(InputError, match=r"nan.nii.gz: .*2 voxel\(s\) are not finite.*nan_policy='zero'"):
        load_for_explanation(path, _preprocessing())
    with caplog.at_level(logging.WARNING):
        data = load_for_explanation(path, nan_policy="zero")
    assert "replacing 1 NaN and 1 Inf" in caplog.text
    x = data["image"]
    assert torch.isfinite(x).all() and float(x[0, 1, 2, 3]) == 0.0 and float(x[0, 0, 0, 0]) == 1.0
    data = load_for_explanation(path, _preprocessing(), nan_policy="zero")
    assert torch.isfinite(data["image"]).all()
    with pytest.raises(InputError, match="nan_policy"):
        load_for_explanation(path, nan_policy="ignore")


def test_unwritable_output(scan, tmp_path):
    path, _, _ = scan
    data = load_for_explanation(path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputError, match=r"file.txt/sub: cannot create the output folder.*--out"):
        check_output_dir(blocker / "sub")
    with pytest.raises(OutputError, match=r"file.txt/sub.*--out"):
        save_attribution(data["image"], data, None, blocker / "sub" / "map.nii.gz")
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    with pytest.raises(OutputError, match=r"must end with"):
        save_attribution(data["image"], data, None, tmp_path / "map.png")


def test_attribution_shape_mismatch(scan, tmp_path):
    path, _, _ = scan
    data = load_for_explanation(path)
    with pytest.raises(InputError, match="does not match the preprocessed image"):
        save_attribution(torch.zeros(1, 5, 5, 5), data, None, tmp_path / "m.nii.gz")


def test_atomic_write(scan, tmp_path, monkeypatch):
    path, _, _ = scan
    pre = _preprocessing()
    data = load_for_explanation(path, pre)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "kept.nii.gz"
    previous.write_bytes(b"an earlier result")

    def broken_write(self, filename, verbose=False, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NibabelWriter, "write", broken_write)
    with pytest.raises(OutputError, match="map.nii.gz: writing the map failed.*No space left"):
        save_attribution(data["image"], data, pre, out_dir / "map.nii.gz")
    with pytest.raises(OutputError):
        save_attribution(data["image"], data, pre, previous)
    assert sorted(os.listdir(out_dir)) == ["kept.nii.gz"]  # no partial map, no temporary file
    assert previous.read_bytes() == b"an earlier result"  # an earlier map is not clobbered


NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.mark.skipif(not (NIBABEL_DATA / "anatomical.nii").is_file(), reason="nibabel test data not installed")
def test_real_las_big_endian_mri(tmp_path):
    """nibabel's sample MRI (LAS, big-endian int16) goes through RAS/1 mm and back onto its own grid."""
    path = NIBABEL_DATA / "anatomical.nii"
    original = nib.load(str(path))
    img = original.get_fdata()
    pre = _preprocessing()
    data = load_for_explanation(path, pre, expected_channels=1, expected_spatial_dims=3)
    out = save_attribution(_f(data["image"]), data, pre, tmp_path / "anat_map.nii.gz")
    written = nib.load(str(out))
    assert written.shape == original.shape
    assert np.abs(written.affine - original.affine).max() < 1e-4
    assert written.get_data_dtype() == np.float32
    assert _corr(np.asarray(written.dataobj), _f((img - img.min()) / (img.max() - img.min()))) > 0.95
    with pytest.raises(InputError, match=r"example4d.nii.gz: .*2 channel\(s\).*expects 1"):
        load_for_explanation(NIBABEL_DATA / "example4d.nii.gz", pre, expected_channels=1)


def test_crop_and_lazy_compose_are_inverted(scan, tmp_path):
    from monai.transforms import CenterSpatialCropd

    path, img, affine = scan
    ref = _f((img - img.min()) / (img.max() - img.min()))
    for lazy in (False, True):
        pre = Compose(
            [LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
             Spacingd("image", pixdim=1.0), CenterSpatialCropd("image", roi_size=(12, 12, 12)),
             ScaleIntensityd("image")],
            lazy=lazy,
        )
        data = load_for_explanation(path, pre)
        assert tuple(data["image"].shape) == (1, 12, 12, 12)
        written = _check_geometry(save_attribution(_f(data["image"]), data, pre, tmp_path / f"c{lazy}.nii.gz"), affine)
        inside = written != 0  # the crop is padded back with zeros
        assert 0.1 < inside.mean() < 0.6
        assert _corr(written[inside], ref[inside]) > 0.85


def test_2d_image(tmp_path):
    path = tmp_path / "slice2d.nii.gz"
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    affine[:2, 3] = [4.0, -3.0]
    nib.save(nib.Nifti1Image(np.random.rand(30, 20).astype(np.float32), affine), path)
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Spacingd("image", pixdim=(1.0, 1.0))])
    data = load_for_explanation(path, pre, expected_channels=1, expected_spatial_dims=2)
    assert tuple(data["image"].shape) == (1, 16, 14)
    written = nib.load(str(save_attribution(data["image"], data, pre, tmp_path / "map2d.nii.gz")))
    assert written.shape == (30, 20)
    assert np.abs(written.affine - affine).max() < 1e-4


def test_non_invertible_preprocessing_is_resampled_by_affine(scan, tmp_path, caplog):
    """A preprocessing MONAI cannot invert (a plain function) still lands on the file's grid, via the affine."""
    path, img, affine = scan
    inner = _preprocessing()

    def plain(d):
        return inner(d)

    data = load_for_explanation(path, plain)
    with caplog.at_level(logging.WARNING):
        out = save_attribution(_f(data["image"]), data, plain, tmp_path / "plain.nii.gz")
    assert "not invertible" in caplog.text
    written = _check_geometry(out, affine)
    assert _corr(written, _f((img - img.min()) / (img.max() - img.min()))) > 0.98
