"""End to end: `esegeta explain` on bundles, the manifest, run configs and bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from esegeta_monai.apps.cli import main
from esegeta_monai.apps.config import RunConfig, load_run_config
from esegeta_monai.errors import ConfigError
from esegeta_monai.methods import available_methods

sys.path.insert(0, str(Path(__file__).parent))
from tiny_bundle import make_tiny_bundle, write_image  # noqa: E402
from zoo import ZOO  # noqa: E402


@pytest.fixture
def bundle(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")


def manifest(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["records"]


def assert_aligned(map_path: Path, image_path: Path):
    written, source = nib.load(str(map_path)), nib.load(str(image_path))
    assert written.shape[:3] == source.shape[:3]
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert written.get_data_dtype() == np.float32
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    data = written.get_fdata()
    assert np.isfinite(data).all() and np.abs(data).sum() > 0
    return data


def test_explain_writes_aligned_maps_and_manifest(bundle, tmp_path):
    out = tmp_path / "out"
    code = main(["-q", "explain", "--bundle", str(bundle), "--methods", "saliency,integrated_gradients",
                 "--target", "argmax:1", "--target", "otsu:1", "--out", str(out)])
    assert code == 0
    records = manifest(out)
    assert {(r["method"], r["target"]) for r in records} == {
        (m, t) for m in ("saliency", "integrated_gradients") for t in ("argmax1", "otsu1")
    }
    for record in records:
        assert record["status"] == "ok" and record["error"] is None and record["seconds"] >= 0
        assert {"image", "method", "target", "class_name", "status", "seconds", "output", "error", "key", "path", "size",
                "sha256"} <= set(record)
        assert record["class_name"] == "blob"  # from the metadata's channel_def
        assert Path(record["output"]) == out / "blob" / f"{record['method']}_{record['target']}.nii.gz"
        assert_aligned(Path(record["output"]), bundle / "sample" / "blob.nii.gz")
    assert not list(out.rglob(".*tmp*"))  # no temporary file left behind


def test_map_is_the_explainer_result_brought_back_to_the_file_grid(bundle, tmp_path):
    """The CLI's map equals Explainer on the preprocessed image, inverted by MONAI."""
    from esegeta_monai import Explainer
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation, save_attribution

    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "saliency", "--out", str(out)]) == 0
    loaded = load_bundle(bundle)
    data = load_for_explanation(loaded.samples[0], loaded.preprocessing)
    attribution = Explainer(loaded.network, "saliency", "argmax:1", roi_size=(16, 16, 16), overlap=0.5, sw_batch_size=2)(data["image"][None])[0]
    reference = save_attribution(attribution, data, loaded.preprocessing, tmp_path / "ref.nii.gz")
    np.testing.assert_allclose(nib.load(str(out / "blob" / "saliency_argmax1.nii.gz")).get_fdata(),
                               nib.load(str(reference)).get_fdata(), rtol=1e-5, atol=1e-8)


def test_mask_and_voxel_targets(bundle, tmp_path):
    image = bundle / "sample" / "blob.nii.gz"
    source = nib.load(str(image))
    mask = np.zeros(source.shape, np.uint8)
    mask[6:12, 8:18, 4:10] = 1
    nib.save(nib.Nifti1Image(mask, source.affine), str(tmp_path / "roi.nii.gz"))
    out = tmp_path / "out"
    code = main(["-q", "explain", "--bundle", str(bundle), "--methods", "saliency", "--out", str(out),
                 "--target", f"mask:1:{tmp_path / 'roi.nii.gz'}", "--target", "voxel:0,1:8,8,8"])
    assert code == 0
    assert sorted(r["target"] for r in manifest(out)) == ["mask1_roi", "voxel0_8-8-8", "voxel1_8-8-8"]
    voxel_map = assert_aligned(out / "blob" / "saliency_voxel1_8-8-8.nii.gz", image)
    assert (voxel_map > 0).mean() < 0.9  # a voxel target has a local receptive field


def test_one_failing_image_does_not_stop_the_others(bundle, tmp_path):
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08 not really gzip")
    nan_image = write_image(tmp_path / "nan.nii.gz")
    volume = nib.load(str(nan_image))
    data = volume.get_fdata().astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, volume.affine), str(nan_image))
    two_channels = write_image(tmp_path / "two.nii.gz", channels=2)
    good = bundle / "sample" / "blob.nii.gz"
    images = [tmp_path / "missing.nii.gz", corrupt, nan_image, two_channels, good]
    args = ["-q", "explain", "--bundle", str(bundle), "--methods", "saliency", "--out", str(out)]
    for image in images:
        args += ["--image", str(image)]
    assert main(args) == 1
    by_image = {Path(r["image"]).name: r for r in manifest(out)}
    assert by_image["blob.nii.gz"]["status"] == "ok"
    for name in ("missing.nii.gz", "corrupt.nii.gz", "nan.nii.gz", "two.nii.gz"):
        assert by_image[name]["status"] == "failed"
        assert name in by_image[name]["error"]
    assert "NaN" in by_image["nan.nii.gz"]["error"]
    assert "channel" in by_image["two.nii.gz"]["error"]
    assert not (out / "missing").exists() and not (out / "corrupt").exists()
    # NaN voxels can be set to zero on request
    out2 = tmp_path / "out2"
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "saliency", "--out", str(out2),
                 "--image", str(nan_image), "--nan-policy", "zero"]) == 0


def test_one_failing_method_does_not_stop_the_others(bundle, tmp_path, monkeypatch):
    from esegeta_monai.methods.gradient import InputXGradientMethod

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(InputXGradientMethod, "run", broken)
    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "input_x_gradient,saliency", "--out", str(out)]) == 1
    status = {r["method"]: r for r in manifest(out)}
    assert status["saliency"]["status"] == "ok"
    assert status["input_x_gradient"]["status"] == "failed" and "simulated failure" in status["input_x_gradient"]["error"]
    assert not (out / "blob" / "input_x_gradient_argmax1.nii.gz").exists()


def test_timeout_is_recorded(bundle, tmp_path):
    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "integrated_gradients", "--timeout", "1e-6", "--out", str(out)]) == 1
    (record,) = manifest(out)
    assert record["status"] == "timeout" and "time budget" in record["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "salency"], "did you mean 'saliency'"),
        (["--target", "argmx:1"], "unknown target kind"),
        (["--roi-size", "8,8"], "has 2 axes"),  # a 2D window for a 3D bundle: known before anything runs
        (["--overlap", "1.5"], "overlap"),
    ],
)
def test_bad_arguments_exit_2_before_writing(bundle, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["-q", "explain", "--bundle", str(bundle), "--out", str(out), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bundle_problems_exit_2_with_the_file_named(bundle, tmp_path, capsys):
    (bundle / "models" / "model.pt").unlink()
    assert main(["-q", "explain", "--bundle", str(bundle), "--out", str(tmp_path / "o")]) == 2
    assert "model.pt" in capsys.readouterr().err
    blocked = tmp_path / "file.txt"
    blocked.write_text("a file, not a folder")
    make_tiny_bundle(tmp_path / "other")
    assert main(["-q", "explain", "--bundle", str(tmp_path / "other"), "--out", str(blocked / "sub")]) == 2
    assert "file.txt" in capsys.readouterr().err


def test_run_config_with_method_keywords_and_flag_overrides(bundle, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"bundle: {bundle}\n"
        "methods:\n  - saliency\n  - saliency: {abs: false, as: saliency_signed}\n  - integrated_gradients: {n_steps: 4}\n"
        "targets: [argmax:1]\nwindow: {roi_size: [16, 16, 16], overlap: 0.25}\n"
        f"out: {tmp_path / 'from_config'}\n"
    )
    out = tmp_path / "from_flag"
    assert main(["-q", "explain", "--config", str(config), "--out", str(out)]) == 0
    assert len(manifest(out)) == 3 and not (tmp_path / "from_config").exists()
    signed = nib.load(str(out / "blob" / "saliency_signed_argmax1.nii.gz")).get_fdata()
    absolute = nib.load(str(out / "blob" / "saliency_argmax1.nii.gz")).get_fdata()
    assert (signed < 0).any() and (absolute >= 0).all()  # abs: false reached the method, under its own name


@pytest.mark.parametrize(
    "text, message",
    [
        ("methds: [saliency]\n", "did you mean 'methods'"),
        ("methods:\n  - saliency: {n_steps: 3}\n", "no keyword 'n_steps'"),
        ("methods: [{saliency: {as: s}}, {input_x_gradient: {as: s}}]\n", "two methods are named 's'"),
        ("methods:\n  - saliency: {as: 'a/b'}\n", "file-name-safe"),
        ("methods:\n  - integrated_gradients: {n_steps: -1}\n", "invalid n_steps=-1"),
        ("window: {mode: cubic}\n", "window.mode"),
        ("timeout: -3\n", "timeout"),
        ("methods: [saliency\n", "not valid YAML"),
    ],
)
def test_run_config_validation_names_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_run_config(path)


def test_shipped_example_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    bundle_overrides = {"explain.json", "swin_unetr_compat.json"}  # monai.bundle configs, tested in test_monai_integration
    configs = sorted(p for p in [*root.glob("*.yaml"), *root.glob("*.json")] if p.name not in bundle_overrides)
    assert configs, "configs/ should hold example run configs"
    for path in configs:
        assert isinstance(load_run_config(path), RunConfig)


def test_bundle_config_prints_the_shipped_override(capsys):
    assert main(["bundle-config"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "explain.json" and json.loads(path.read_text())["explain_handler"]["_target_"] == "esegeta_monai.monai.handlers.ExplainHandler"
    assert main(["bundle-config", "--list"]) == 0 and "swin_unetr_compat.json" in capsys.readouterr().out
    assert main(["bundle-config", "no_such"]) == 2 and "shipped: explain.json" in capsys.readouterr().err


def test_methods_listing_names_every_registered_method(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in available_methods():
        assert name in listing
    result = subprocess.run([sys.executable, "-m", "esegeta_monai", "methods", "--json"], capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)
    assert {"name", "family", "library", "dims", "tasks"} <= set(rows[0])


@pytest.mark.skipif(not (ZOO / "spleen_ct_segmentation").is_dir(), reason="shared model zoo not present")
def test_spleen_bundle_with_random_weights(tmp_path):
    from monai.networks.nets import UNet

    spleen = tmp_path / "spleen"
    shutil.copytree(ZOO / "spleen_ct_segmentation", spleen)
    (spleen / "models").mkdir()
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch")
    torch.save(net.state_dict(), spleen / "models" / "model.pt")
    affine = np.array([[-1.5, 0, 0, 0], [0, -1.5, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 60, (40, 44, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(ct, affine), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out"
    code = main(["-q", "explain", "--bundle", str(spleen), "--image", str(tmp_path / "ct.nii.gz"), "--methods", "saliency",
                 "--target", "mask:1:" + str(tmp_path / "ct.nii.gz"), "--out", str(out)])
    assert code == 0, manifest(out)
    assert_aligned(out / "ct" / "saliency_mask1_ct.nii.gz", tmp_path / "ct.nii.gz")


def test_layers_listing_and_cam_with_layer_flag(bundle, tmp_path, capsys):
    assert main(["layers", "--bundle", str(bundle), "--contains", "Conv3d"]) == 0
    listing = capsys.readouterr().out
    assert "model.1.submodule.0.conv.unit0.conv            Conv3d                (1, 8, 4, 4, 4)" in listing
    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "gradcam,saliency", "--layer", "model.1.submodule.0",
                 "--out", str(out)]) == 0
    assert_aligned(out / "blob" / "gradcam_argmax1.nii.gz", bundle / "sample" / "blob.nii.gz")
    assert main(["-q", "explain", "--bundle", str(bundle), "--methods", "gradcam", "--out", str(tmp_path / "o2")]) == 2
    assert "needs layer=" in capsys.readouterr().err


def test_layer_resolution_maps_are_written_on_their_own_grid(tmp_path):
    """A CAM at layer resolution is written with the layer grid's affine (each layer voxel at the
    centre of its block of preprocessed voxels), not inverted onto the input grid."""
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.core.windows import layer_affine
    from esegeta_monai.monai.io import load_for_explanation

    bundle_dir = make_tiny_bundle(tmp_path / "bundle")
    scan = write_image(tmp_path / "scan.nii.gz", shape=(32, 32, 32), affine=np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS, 1 mm
    config = tmp_path / "run.yaml"
    config.write_text(f"bundle: {bundle_dir}\nimages: [{scan}]\nmethods:\n  - gradcam: {{layer: model.0, resolution: layer}}\n"
                      f"targets: [argmax:1]\nwindow: {{roi_size: [16, 16, 16], overlap: 0.5}}\nout: {tmp_path / 'out'}\n")
    assert main(["explain", "--config", str(config), "-q"]) == 0
    written = nib.load(str(tmp_path / "out" / "scan" / "gradcam_argmax1.nii.gz"))
    bundle = load_bundle(bundle_dir)
    image = load_for_explanation(scan, bundle.preprocessing)["image"]  # RAS after the bundle's Orientationd
    assert written.shape == (16, 16, 16)
    np.testing.assert_allclose(written.affine, layer_affine(image.affine, (2.0, 2.0, 2.0)).numpy(), atol=1e-4)
    # each layer voxel sits at the centre of its 2×2×2 block: half a voxel in from the first input voxel's centre
    np.testing.assert_allclose(np.abs(np.diag(written.affine)[:3]), [2.0, 2.0, 2.0], atol=1e-4)


def test_per_channel_maps_are_written_as_4d_files(tmp_path):
    """reduce: none keeps one map per layer channel in the file; --channel-reduce none keeps the input channels."""
    bundle_dir = make_tiny_bundle(tmp_path / "bundle")
    config = tmp_path / "run.yaml"
    config.write_text(f"bundle: {bundle_dir}\nmethods:\n  - layer_gradient_x_activation: {{layer: model.0, reduce: none, as: per_channel}}\n"
                      f"  - layer_gradient_x_activation: {{layer: model.0, as: summed}}\ntargets: [argmax:1]\nout: {tmp_path / 'out'}\n")
    assert main(["explain", "--config", str(config), "-q"]) == 0
    source = nib.load(str(bundle_dir / "sample" / "blob.nii.gz"))
    per_channel = nib.load(str(tmp_path / "out" / "blob" / "per_channel_argmax1.nii.gz"))
    summed = nib.load(str(tmp_path / "out" / "blob" / "summed_argmax1.nii.gz"))
    assert per_channel.shape == (*source.shape, 4) and summed.shape == source.shape
    np.testing.assert_allclose(per_channel.get_fdata().sum(-1), summed.get_fdata(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(per_channel.affine, source.affine, atol=1e-5)


def test_feature_ablation_by_a_label_file(tmp_path):
    """features: <label file> ablates the file's regions, resampled onto the network's grid; each
    region gets one value in the written map (up to the interpolation back onto the scan)."""
    bundle_dir = make_tiny_bundle(tmp_path / "bundle")
    sample = nib.load(str(bundle_dir / "sample" / "blob.nii.gz"))
    labels = np.zeros(sample.shape, np.int16)
    labels[: sample.shape[0] // 2] = 1
    labels[sample.shape[0] // 2 :, : sample.shape[1] // 2] = 7
    label_file = tmp_path / "regions.nii.gz"
    nib.save(nib.Nifti1Image(labels, sample.affine), str(label_file))
    config = tmp_path / "run.yaml"
    config.write_text(f"bundle: {bundle_dir}\nmethods:\n  - feature_ablation: {{features: {label_file}, fill: 0.0}}\n"
                      f"targets: [argmax:1]\nout: {tmp_path / 'out'}\n")
    assert main(["explain", "--config", str(config), "-q"]) == 0
    written = nib.load(str(tmp_path / "out" / "blob" / "feature_ablation_argmax1.nii.gz")).get_fdata()
    assert written.shape == sample.shape
    inner = written[1 : sample.shape[0] // 2 - 1]  # away from region borders (trilinear inversion blends them)
    assert np.ptp(inner) <= 1e-4 * max(np.abs(written).max(), 1e-12) and np.abs(written).max() > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"bundle: {bundle_dir}\nmethods:\n  - feature_ablation: {{features: {tmp_path / 'none.nii.gz'}}}\nout: {tmp_path / 'o2'}\n")
    assert main(["explain", "--config", str(bad), "-q"]) == 1  # recorded as failed, with the file named
    records = json.loads((tmp_path / "o2" / "manifest.json").read_text())["records"]
    assert records[0]["status"] == "failed" and "none.nii.gz" in records[0]["error"]
