"""Model-zoo bundles explained as they are (random weights, synthetic inputs with non-identity
affines): one test per cause of issue 17 on the shared real configurations.

The heavy networks (UNesT at 96³, SegResNet at 240×240×160) are explained here through smaller
windows (``--roi-size``, a run option, not a change to the bundle) to keep the suite short;
``ESEGETA_ZOO_FULL=1`` runs every bundle with its own window (docs/bundles.md has the times).
"""

from __future__ import annotations

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.apps.cli import main
from esegeta_monai.apps.inputs import ImageInput, collect_inputs, read_image_list
from esegeta_monai.core.targets import ArgmaxRegion
from esegeta_monai.errors import BundleError, InputError
from esegeta_monai.monai.bundle import load_bundle
from esegeta_monai.monai.io import load_for_explanation
from esegeta_monai.monai.slices import SliceNetwork
from zoo import ZOO
from zoo_cases import make_zoo_case

pytestmark = pytest.mark.skipif(not ZOO.is_dir(), reason="model-zoo configs not available")
FULL = os.environ.get("ESEGETA_ZOO_FULL") == "1"


def explain(case, tmp_path, *extra: str) -> dict:
    """``esegeta explain`` on the case (saliency, Otsu region of class 1: never empty with random
    weights); returns the map's record."""
    out = tmp_path / "out"
    args = ["-q", "explain", "--bundle", str(case.bundle), *case.image_args, "--methods", "saliency",
            "--target", "otsu:1", "--out", str(out), "--no-figures", *extra]
    assert main(args) == 0
    records = json.loads((out / "manifest.json").read_text())["records"]
    assert [r["status"] for r in records] == ["ok"], records
    return records[0]


def assert_aligned(record: dict, files) -> np.ndarray:
    """The map lies on every input file's grid: same spatial shape, same affine."""
    written = nib.load(record["output"])
    for _, path in files:
        source = nib.load(str(path))
        assert written.shape[:3] == source.shape[:3]
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    data = np.asarray(written.dataobj)
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    return data


def test_whole_body_channel_first_in_its_loader(tmp_path):
    """`LoadImaged` + `EnsureTyped` + `EnsureChannelFirstd`: the shape is checked on what the network
    receives, not right after loading (which refused it as 2D)."""
    case = make_zoo_case("wholeBody_ct_segmentation", tmp_path)
    record = explain(case, tmp_path, *([] if FULL else ["--roi-size", "64,64,64"]))
    assert_aligned(record, case.files)


def test_brats_four_file_case(tmp_path):
    """A case of four MRI sequences stacked as channels by `LoadImaged`: `--image image=FILE` pairs;
    per-channel maps (one volume per file, in their order) aligned with every file."""
    case = make_zoo_case("brats_mri_segmentation", tmp_path)
    record = explain(case, tmp_path, "--channel-reduce", "none", *([] if FULL else ["--roi-size", "32,32,32"]))
    data = assert_aligned(record, case.files)
    assert data.shape[3:] == (4,) and all(np.abs(data[..., c]).max() > 0 for c in range(4))
    assert [e["role"] for e in record["inputs"]] == ["image:image"] * 4
    assert [os.path.basename(e["path"]) for e in record["inputs"]] == ["t1c.nii.gz", "t1.nii.gz", "t2.nii.gz", "flair.nii.gz"]


def test_brats_one_file_refused_with_a_fix_that_works(tmp_path):
    case = make_zoo_case("brats_mri_segmentation", tmp_path)
    bundle = load_bundle(case.bundle)
    path = case.files[0][1]
    with pytest.raises(InputError) as info:
        load_for_explanation(path, bundle.preprocessing, bundle.image_key, bundle.in_channels, bundle.spatial_dims)
    message = str(info.value)
    assert "takes 4 channels" in message and "--image image=" in message
    data = load_for_explanation(path, bundle.preprocessing, bundle.image_key, bundle.in_channels, bundle.spatial_dims,
                                files=[("image", str(p)) for _, p in case.files])  # the fix
    assert tuple(data["image"].shape) == (4, 20, 24, 16)


def test_stacked_files_on_different_grids_are_refused(tmp_path):
    case = make_zoo_case("brats_mri_segmentation", tmp_path)
    moved = nib.load(str(case.files[1][1]))
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), moved.affine + np.diag([0, 0, 0.5, 0])), str(case.files[1][1]))
    bundle = load_bundle(case.bundle)
    with pytest.raises(InputError, match=r"t1.nii.gz: stacked with .*t1c.nii.gz.*another grid.*resample"):
        load_for_explanation(case.files[0][1], bundle.preprocessing, files=[("image", str(p)) for _, p in case.files])


def test_renal_unest_from_the_bundles_scripts(tmp_path):
    """`_target_: scripts.networks.unest.UNesT` resolves with the bundle on the import path, and
    the bundle's `scripts` does not stay importable afterwards."""
    case = make_zoo_case("renalStructures_UNEST_segmentation", tmp_path)
    bundle = load_bundle(case.bundle)
    assert type(bundle.network).__name__ == "UNesT" and "scripts" not in sys.modules
    assert bundle.window.roi_size == (96, 96, 96)  # UNesT's patch embedding takes 96³ windows only
    if FULL:  # ~1–2 min on 2 cores: a saliency map of a 96³ UNesT window
        assert_aligned(explain(case, tmp_path), case.files)


def test_pediatric_checkpoint_path_itk_reader_and_scripts_import(tmp_path):
    """Weights at the CheckpointLoader's `models/dynunet_FT.pt`, `ITKReader` without itk, and
    `$import scripts.monai_utils`: explained with no override."""
    case = make_zoo_case("pediatric_abdominal_ct_segmentation", tmp_path)
    bundle = load_bundle(case.bundle)
    assert bundle.weights_path.name == "dynunet_FT.pt"
    record = explain(case, tmp_path, *([] if FULL else ["--roi-size", "64,64,32"]))
    assert_aligned(record, case.files)


def test_ventricular_slice_inferer_cli(tmp_path):
    case = make_zoo_case("ventricular_short_axis_3label", tmp_path)
    assert_aligned(explain(case, tmp_path), case.files)


def test_slice_inferer_saliency_equals_autograd_through_slice_inferer(tmp_path):
    """Exact through slices: with the bundle's own `SliceInferer` settings, the map of a 2D network
    lifted to volumes equals autograd through `SliceInferer` (a small 2D UNet stands in for the
    bundle's, to keep the test short; the decomposition does not depend on the network)."""
    from monai.networks.nets import UNet

    case = make_zoo_case("ventricular_short_axis_3label", tmp_path)
    bundle = load_bundle(case.bundle)
    assert isinstance(bundle.network, SliceNetwork) and bundle.slice_dim == 2 and bundle.window.roi_size == (256, 256, 1)
    torch.manual_seed(0)
    net2d = UNet(2, 1, 4, (4, 8, 16), (2, 2), num_res_units=1).eval()
    window = {**bundle.window.as_dict(), "roi_size": (24, 20, 1), "overlap": 0.5}  # several windows per slice
    inferer = type(bundle.inferer_object)(roi_size=(24, 20), spatial_dim=2, overlap=0.5)
    x = torch.rand(1, 1, 40, 36, 3)
    x_ref = x.clone().requires_grad_(True)
    y = inferer(x_ref, net2d)
    region = (y.argmax(1) == 1).float().detach()
    (y[:, 1] * region).sum().backward()
    ours = Explainer(SliceNetwork(net2d, bundle.slice_dim), "saliency", ArgmaxRegion(1), **window, abs=False)(x)
    assert region.sum() > 0
    torch.testing.assert_close(ours, x_ref.grad, rtol=1e-4, atol=1e-6 * float(x_ref.grad.abs().max()))


def test_a_case_of_several_keys(tmp_path):
    """A bundle that reads two keys (two CT phases concatenated): one file is refused with the keys
    to give; KEY=FILE pairs run and the map is aligned with both files."""
    from case_bundle import make_phases_bundle, write_phases

    root = make_phases_bundle(tmp_path / "phases")
    arterial, venous = write_phases(tmp_path)
    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(root), "--image", str(arterial), "--out", str(out), "--no-figures"]) == 1
    failed = json.loads((out / "manifest.json").read_text())["records"][0]
    assert "reads a case of several files, under the keys image, venous" in failed["error"]
    assert "--image image=arterial.nii.gz --image venous=OTHER_FILE" in failed["error"]
    out = tmp_path / "out2"
    assert main(["-q", "explain", "--bundle", str(root), "--image", f"image={arterial}", "--image", f"venous={venous}",
                 "--out", str(out), "--no-figures", "--target", "otsu:1"]) == 0
    record = json.loads((out / "manifest.json").read_text())["records"][0]
    assert_aligned(record, [("image", arterial), ("venous", venous)])
    assert [e["role"] for e in record["inputs"]] == ["image:image", "image:venous"]
    out = tmp_path / "out3"
    assert main(["-q", "explain", "--bundle", str(root), "--image", f"image={arterial}", "--image", f"arterial={venous}",
                 "--out", str(out), "--no-figures"]) == 1
    error = json.loads((out / "manifest.json").read_text())["records"][0]["error"]
    assert "reads the keys image, venous" in error and "arterial is not read by it" in error


def test_cases_from_datalists_and_csv(tmp_path):
    for name in ("t1.nii.gz", "t2.nii.gz", "ct.nii.gz", "pv.nii.gz", "seg.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps({"testing": [
        {"image": ["t1.nii.gz", "t2.nii.gz"], "label": "seg.nii.gz"},
        {"image": "ct.nii.gz", "venous": "pv.nii.gz", "age": "42"}]}))
    first, second = read_image_list(tmp_path / "list.json")
    assert first.files == (("image", str(tmp_path / "t1.nii.gz")), ("image", str(tmp_path / "t2.nii.gz")))
    assert first.image == str(tmp_path / "t1.nii.gz") and first.label == str(tmp_path / "seg.nii.gz")
    assert second.files == (("image", str(tmp_path / "ct.nii.gz")), ("venous", str(tmp_path / "pv.nii.gz")))
    (tmp_path / "list.csv").write_text("image,venous,label\nt1.nii.gz;t2.nii.gz,,seg.nii.gz\nct.nii.gz,pv.nii.gz,\n")
    assert [i.files for i in read_image_list(tmp_path / "list.csv")] == [first.files, second.files]
    plain = collect_inputs([str(tmp_path / "ct.nii.gz"), f"image={tmp_path / 't1.nii.gz'}", f"image={tmp_path / 't2.nii.gz'}"])
    assert plain == [ImageInput(str(tmp_path / "ct.nii.gz")), ImageInput.case(first.files)]


def test_custom_inferer_refused_by_class(tmp_path):
    from tiny_bundle import make_tiny_bundle

    root = make_tiny_bundle(tmp_path / "tiny")
    with pytest.raises(BundleError, match=r"`inferer` is a monai.inferers.inferer.SaliencyInferer.*SlidingWindowInferer"):
        load_bundle(root, overrides={"inferer": {"_target_": "SaliencyInferer", "cam_name": "GradCAM", "target_layers": "model"}})
    assert load_bundle(root, overrides={"inferer": {"_target_": "SimpleInferer"}}).window.roi_size is None
