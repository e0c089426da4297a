"""Hardening of image geometry (issue 13): broken NIfTI headers, single-slice volumes, labels of
another grid, colour PNGs.

The rule under test: a written map is a correct map of the right image, aligned — or the load or
write says why not; a geometry is never silently replaced.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from esegeta_monai.errors import InputError, OutputError, TargetError
from esegeta_monai.monai.io import load_for_explanation, save_attribution
from esegeta_monai.monai.io.masks import load_labels_like, load_mask_like

SHAPE = (8, 9, 10)
BASE = np.array([[1.5, 0.0, 0.0, 10.0], [0.0, 1.5, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
LESION = Path(__file__).resolve().parents[1] / "bundles" / "lesion_cls_2d_demo"


def _nifti(path: Path, fields: dict | None = None, shape=SHAPE, affine=BASE) -> Path:
    """A NIfTI file (sform and qform codes 1, both ``affine``) whose header fields ``fields`` are then
    overwritten in place, bypassing nibabel's consistency fixes: the header a buggy tool writes."""
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, path)
    if fields:
        with open(path, "r+b") as f:
            header = nib.Nifti1Header.from_fileobj(f)
            for key, value in fields.items():
                header[key] = value
            f.seek(0)
            header.write_to(f)
    return path


def _nib_affine(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def _bundle_like() -> Compose:
    return Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                    Spacingd("image", pixdim=1.0, mode="bilinear")])


SHEAR = BASE.copy()
SHEAR[0, 1] = 0.8


# --- 1. broken or inconsistent NIfTI geometry ----------------------------------------------------


def test_all_zero_sform_is_refused_naming_the_header_fields(tmp_path):
    path = _nifti(tmp_path / "zero.nii", {"srow_x": [0] * 4, "srow_y": [0] * 4, "srow_z": [0] * 4})
    with pytest.raises(InputError) as info:
        load_for_explanation(path)
    text = str(info.value)
    assert str(path) in text and "sform is all zero while sform_code is 1" in text
    assert "qform is valid" in text and "sform_code 0" in text


def test_nan_in_the_sform_is_refused(tmp_path):
    path = _nifti(tmp_path / "nan.nii", {"srow_y": [0.0, np.nan, 0.0, -20.0]})
    with pytest.raises(InputError, match=r"sform has non-finite values \(NaN/Inf\) in srow_y.*qform is valid"):
        load_for_explanation(path, preprocessing=_bundle_like())


def test_nan_qform_used_alone_is_refused(tmp_path):
    path = _nifti(tmp_path / "nanq.nii", {"quatern_b": np.nan, "sform_code": 0})
    with pytest.raises(InputError, match=r"sform_code is 0.*qform has non-finite values.*quatern_b"):
        load_for_explanation(path)


def test_singular_sform_is_refused(tmp_path):
    path = _nifti(tmp_path / "flat.nii", {"srow_z": [0.0, 0.0, 0.0, 5.0]})
    with pytest.raises(InputError, match=r"sform is singular"):
        load_for_explanation(path)


def test_clean_file_has_an_empty_warning_list(tmp_path):
    data = load_for_explanation(_nifti(tmp_path / "ok.nii"))
    assert data["image"].meta["esegeta_warnings"] == []


@pytest.mark.parametrize("preprocessing", [None, "bundle"])
def test_sheared_sform_follows_nibabel_with_a_warning_and_the_map_keeps_it(tmp_path, preprocessing):
    path = _nifti(tmp_path / "shear.nii", {"srow_x": SHEAR[0]})
    prep = _bundle_like() if preprocessing else None
    data = load_for_explanation(path, prep)
    notes = data["image"].meta["esegeta_warnings"]
    assert any("sform" in n and "qform" in n and "shear" in n for n in notes), notes
    assert np.allclose(np.asarray(data["image"].meta["original_affine"]), SHEAR, atol=1e-5)  # nibabel's choice
    out = save_attribution(data["image"] * 0 + 1, data, prep, tmp_path / "map.nii.gz")
    written = nib.load(str(out))
    assert written.shape == SHAPE
    assert np.abs(written.affine - _nib_affine(path)).max() < 1e-4  # as nibabel reads the input
    assert np.abs(written.header.get_qform() - nib.load(str(path)).header.get_qform()).max() < 1e-4  # as ITK reads it


def test_sform_and_qform_apart_use_the_sform_with_a_warning(tmp_path):
    path = _nifti(tmp_path / "apart.nii", {"srow_x": [1.5, 0.0, 0.0, 50.0]})
    data = load_for_explanation(path)
    notes = data["image"].meta["esegeta_warnings"]
    assert len(notes) == 1 and "40" in notes[0] and "mm" in notes[0] and "sform" in notes[0], notes
    out = save_attribution(data["image"], data, None, tmp_path / "map.nii.gz")
    assert np.abs(nib.load(str(out)).affine - _nib_affine(path)).max() < 1e-4


def test_save_refuses_a_map_whose_affine_differs_from_the_input_file(tmp_path):
    path = _nifti(tmp_path / "scan.nii")
    data = load_for_explanation(path)
    moved = BASE.copy()
    moved[:3, 3] += 7.0
    _nifti(path, affine=moved)  # the file changed after it was loaded
    out = tmp_path / "out" / "map.nii.gz"
    with pytest.raises(OutputError, match=r"affine .* differs from the input file's affine"):
        save_attribution(data["image"], data, None, out)
    assert not out.parent.exists()  # refused before anything is written


def test_save_refuses_a_map_that_differs_from_the_readers_original_affine(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from esegeta_monai.monai.io import nifti

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 1.2))
    path = tmp_path / "scan.mha"
    sitk.WriteImage(image, str(path))
    data = load_for_explanation(path)
    assert data["image"].meta["esegeta_warnings"] == []

    def shifted(inv, meta):
        inv = MetaTensor(inv.as_tensor(), meta=dict(inv.meta))
        inv.affine = inv.affine.clone()
        inv.affine[0, 3] += 3.0
        return inv

    monkeypatch.setattr(nifti, "_to_original_grid", shifted)
    with pytest.raises(OutputError, match="differs from the input's original affine"):
        save_attribution(data["image"], data, None, tmp_path / "map.nii.gz")
    assert not (tmp_path / "map.nii.gz").exists()


# --- 2. single-slice volumes keep their shape --------------------------------------------------


def test_single_slice_3d_input_gives_a_single_slice_3d_map(tmp_path):
    path = _nifti(tmp_path / "slice.nii", shape=(16, 12, 1))
    data = load_for_explanation(path)
    out = save_attribution(data["image"], data, None, tmp_path / "map.nii.gz")
    written = nib.load(str(out))
    assert written.shape == (16, 12, 1)
    assert np.allclose(np.asarray(written.dataobj), np.asarray(nib.load(str(path)).dataobj))


def test_single_slice_two_channel_input_keeps_its_shape_with_channel_reduce_none(tmp_path):
    data_ = np.random.default_rng(1).random((16, 12, 1, 2)).astype(np.float32)
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(data_, BASE), path)
    data = load_for_explanation(path, expected_channels=2)
    out = save_attribution(data["image"], data, None, tmp_path / "map.nii.gz", channel_reduce="none")
    assert nib.load(str(out)).shape == (16, 12, 1, 2)
    out = save_attribution(data["image"], data, None, tmp_path / "sum.nii.gz")
    assert nib.load(str(out)).shape == (16, 12, 1)


def test_2d_inputs_still_give_2d_maps(tmp_path):
    from PIL import Image

    png = tmp_path / "grey.png"
    Image.fromarray((np.arange(12 * 7).reshape(7, 12) % 255).astype(np.uint8)).save(png)  # width 12, height 7
    data = load_for_explanation(png)
    assert nib.load(str(save_attribution(data["image"], data, None, tmp_path / "png.nii.gz"))).shape == (12, 7)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((12, 7), np.float32), np.eye(4)), flat)
    data = load_for_explanation(flat)
    assert nib.load(str(save_attribution(data["image"], data, None, tmp_path / "flat_map.nii.gz"))).shape == (12, 7)


# --- 3. labels and masks of another grid -------------------------------------------------------


def test_png_label_of_another_size_is_refused(tmp_path):
    from PIL import Image

    label = tmp_path / "small_mask.png"
    Image.fromarray(np.full((50, 40), 255, np.uint8)).save(label)  # 40 wide, 50 high
    data = load_for_explanation(LESION / "sample" / "lesion_0.png")
    with pytest.raises(TargetError, match=r"40×50.*64×64|no geometry"):
        load_mask_like(label, data["image"])
    with pytest.raises(TargetError, match="no geometry"):
        load_labels_like(label, data["image"])
    assert load_mask_like(LESION / "sample" / "lesion_0_mask.png", data["image"]).shape == (64, 64)  # the right one


def test_cropped_nifti_label_is_resampled_and_localises_like_the_whole_label(tmp_path):
    from esegeta_monai.evaluation.faithfulness import localisation

    full_path = LESION / "sample" / "lesion_1_mask.nii.gz"
    full = nib.load(str(full_path))
    inside = np.argwhere(np.asarray(full.dataobj) > 0)
    lo, hi = inside.min(0), inside.max(0) + 1
    assert lo.min() > 3 and (np.array(full.shape) - hi).min() > 3  # the crop below keeps the whole region
    cropped_path = tmp_path / "cropped_mask.nii.gz"
    nib.save(full.slicer[lo[0] - 2: hi[0] + 2, lo[1] - 3: hi[1] + 1], cropped_path)  # nibabel moves the affine
    data = load_for_explanation(LESION / "sample" / "lesion_1.nii.gz")
    whole = load_mask_like(full_path, data["image"])
    cropped = load_mask_like(cropped_path, data["image"])
    assert np.array_equal(whole, cropped)
    attribution = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert localisation(attribution, cropped)["ratio"] == localisation(attribution, whole)["ratio"]


def test_label_outside_the_image_is_refused(tmp_path):
    full = nib.load(str(LESION / "sample" / "lesion_1_mask.nii.gz"))
    far = full.affine.copy()
    far[:2, 3] += 500.0
    path = tmp_path / "far_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(full.dataobj), far), path)
    data = load_for_explanation(LESION / "sample" / "lesion_1.nii.gz")
    for load in (load_mask_like, load_labels_like):
        with pytest.raises(TargetError, match="does not overlap the image"):
            load(path, data["image"])


def test_evaluate_refuses_a_label_of_another_size(tmp_path):
    from PIL import Image

    from esegeta_monai.apps.cli import main

    label = tmp_path / "small_mask.png"
    mask = np.zeros((50, 40), np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(label)
    code = main(["evaluate", "--bundle", str(LESION), "--image", str(LESION / "sample" / "lesion_0.png"),
                 "--label", str(label), "--methods", "saliency", "--metrics", "localisation",
                 "--out", str(tmp_path / "eval"), "-q"])
    assert code == 2
    assert not (tmp_path / "eval" / "evaluation.csv").exists()


# --- 4. colour PNG on a grey model -------------------------------------------------------------


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("RGBA", 4)])
def test_colour_png_on_a_one_channel_model_gets_a_colour_hint(tmp_path, mode, channels):
    from PIL import Image

    path = tmp_path / f"{mode}.png"
    Image.fromarray(np.zeros((20, 30, channels), np.uint8), mode).save(path)
    with pytest.raises(InputError) as info:
        load_for_explanation(path, expected_channels=1, expected_spatial_dims=2)
    text = str(info.value)
    assert "4D" not in text and "colour" in text and "grey" in text and "3 channels" in text


# --- more of the same rules ----------------------------------------------------------------------


def test_a_writer_that_changes_the_geometry_publishes_nothing(tmp_path, monkeypatch):
    from esegeta_monai.monai.io import nifti

    data = load_for_explanation(_nifti(tmp_path / "scan.nii"))
    original = nifti._write_nifti

    def moved(array, affine, filename, *rest):
        affine = torch.as_tensor(affine).clone()
        affine[2, 3] += 1.0
        original(array, affine, filename, *rest)

    monkeypatch.setattr(nifti, "_write_nifti", moved)
    out = tmp_path / "out" / "map.nii.gz"
    with pytest.raises(OutputError, match="the written map has the affine"):
        save_attribution(data["image"], data, None, out)
    assert list(out.parent.iterdir()) == []  # neither the map nor a temporary file


def test_nrrd_output_of_a_sheared_input_is_refused(tmp_path):
    data = load_for_explanation(_nifti(tmp_path / "shear.nii", {"srow_x": SHEAR[0]}))
    with pytest.raises(OutputError, match="no shear: write this map as NIfTI"):
        save_attribution(data["image"], data, None, tmp_path / "map.nrrd", writer_format="nrrd")
    assert not (tmp_path / "map.nrrd").exists()


def test_a_preprocessing_that_reads_the_file_itself_cannot_replace_the_sform(tmp_path):
    path = _nifti(tmp_path / "shear.nii", {"srow_x": SHEAR[0]})
    compose = _bundle_like()
    with pytest.raises(InputError, match="differs from the file's header as nibabel reads it"):
        load_for_explanation(path, lambda data: compose(data))  # not a Compose: no loading stage of its own
    assert load_for_explanation(_nifti(tmp_path / "ok.nii"), lambda data: compose(data))["image"].ndim == 4


def test_sheared_sform_without_qform_says_itk_cannot_place_it(tmp_path):
    path = _nifti(tmp_path / "shear.nii", {"srow_x": SHEAR[0], "qform_code": 0})
    data = load_for_explanation(path)  # MONAI alone would use the qform's fields, though qform_code is 0
    assert np.allclose(data["image"].affine.numpy(), SHEAR, atol=1e-5)
    assert "ITK and 3D Slicer cannot place this scan" in data["image"].meta["esegeta_warnings"][0]


def test_nan_voxels_replaced_are_recorded_in_the_warnings(tmp_path):
    values = np.ones(SHAPE, np.float32)
    values[1, 2, 3] = np.nan
    path = tmp_path / "nan_voxel.nii.gz"
    nib.save(nib.Nifti1Image(values, BASE), path)
    notes = load_for_explanation(path, nan_policy="zero")["image"].meta["esegeta_warnings"]
    assert notes == [f"{path}: 1 NaN and 0 Inf voxel(s) replaced by 0 (nan_policy='zero')"]


def test_png_label_of_a_nifti_image_lies_on_the_image_grid(tmp_path):
    from PIL import Image

    mask = nib.load(str(LESION / "sample" / "lesion_1_mask.nii.gz"))
    Image.fromarray(((np.asarray(mask.dataobj) > 0).astype(np.uint8) * 255).T).save(tmp_path / "mask.png")
    data = load_for_explanation(LESION / "sample" / "lesion_1.nii.gz")
    expected = load_mask_like(LESION / "sample" / "lesion_1_mask.nii.gz", data["image"])
    assert np.array_equal(load_mask_like(tmp_path / "mask.png", data["image"]), expected)


def test_colour_label_and_broken_mask_header_are_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "rgb_mask.png")
    data = load_for_explanation(LESION / "sample" / "lesion_0.png")
    with pytest.raises(TargetError, match="has 3 channels.*grey"):
        load_mask_like(tmp_path / "rgb_mask.png", data["image"])
    zero = _nifti(tmp_path / "zero_mask.nii", {"srow_x": [0] * 4, "srow_y": [0] * 4, "srow_z": [0] * 4})
    data = load_for_explanation(_nifti(tmp_path / "ok.nii"))
    with pytest.raises(TargetError, match="zero_mask.nii: the NIfTI header gives no usable position"):
        load_mask_like(zero, data["image"])


def test_grey_png_on_a_colour_model_gets_the_reverse_hint(tmp_path):
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)
    with pytest.raises(InputError, match=r"grey-level 2D image; the network expects a colour \(RGB\) image"):
        load_for_explanation(path, expected_channels=3, expected_spatial_dims=2)


def test_oblique_files_whose_qform_rounds_the_sform_give_no_warning(tmp_path):
    theta = np.deg2rad(17.0)
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) @ np.diag(
        [0.7, -0.9, 1.6])
    oblique[:3, 3] = [-118.3, 35.7, 512.25]
    prep = _bundle_like()
    data = load_for_explanation(_nifti(tmp_path / "oblique.nii", affine=oblique), prep)
    assert data["image"].meta["esegeta_warnings"] == []
    out = save_attribution(data["image"], data, prep, tmp_path / "map.nii.gz")
    assert np.array_equal(nib.load(str(out)).affine, _nib_affine(tmp_path / "oblique.nii"))  # bit for bit
    example = Path(nib.__file__).parent / "tests" / "data" / "example_nifti2.nii.gz"  # sform and qform 0.004 mm apart
    if example.is_file():
        from esegeta_monai.monai.io.geometry import nifti_geometry

        assert nifti_geometry(example).warnings == []


def test_nifti_label_of_a_png_image_must_have_its_size(tmp_path):
    data = load_for_explanation(LESION / "sample" / "lesion_0.png")  # no geometry: the label lies on its pixels
    mask = nib.load(str(LESION / "sample" / "lesion_1_mask.nii.gz"))
    assert load_mask_like(LESION / "sample" / "lesion_1_mask.nii.gz", data["image"]).sum() == (np.asarray(mask.dataobj) > 0).sum()
    nib.save(mask.slicer[:40, :50], tmp_path / "cropped.nii.gz")
    with pytest.raises(TargetError, match=r"is 40×50 pixels.*is 64×64.*lesion_0.png has no geometry \(format .png\)"):
        load_mask_like(tmp_path / "cropped.nii.gz", data["image"])
