"""MONAI integration: Explaind in a hand-made Compose, ExplainHandler on a SupervisedEvaluator,
and the shipped explain.json override inside `python -m monai.bundle run` — all giving the
maps `esegeta explain` writes, aligned with the input file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import Compose, Invertd, SaveImaged

import esegeta_monai.maps
from esegeta_monai.apps.cli import main
from esegeta_monai.monai.bundle import load_bundle, shipped_config
from esegeta_monai.apps.config import MethodSpec, RunConfig
from esegeta_monai.errors import BundleError, ConfigError, EsegetaError, MethodError
from esegeta_monai.monai.handlers import ExplainHandler
from esegeta_monai.apps.cohort import run_explanations
from esegeta_monai.monai.transforms import Explain, Explaind
from tiny_bundle import make_tiny_bundle, write_image
from zoo import ZOO

METHODS = ["saliency", {"name": "integrated_gradients", "n_steps": 4}]
SPECS = [MethodSpec("saliency"), MethodSpec("integrated_gradients", {"n_steps": 4})]
MAPS = ("saliency_argmax1", "integrated_gradients_argmax1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
    write_image(root / "sample" / "second.nii.gz", seed=3)  # same grid as blob.nii.gz: they batch
    return load_bundle(root)


@pytest.fixture(scope="module")
def cli_maps(tiny, tmp_path_factory):
    """What `esegeta explain` writes for the tiny bundle's two samples."""
    out = tmp_path_factory.mktemp("cli")
    result = run_explanations(RunConfig(bundle=str(tiny.root), out=str(out), methods=list(SPECS)), bundle=tiny)
    assert result.ok
    return out


def _assert_same_file(path: Path, reference: Path, source: Path) -> None:
    ours, ref, image = nib.load(str(path)), nib.load(str(reference)), nib.load(str(source))
    np.testing.assert_allclose(np.squeeze(ours.get_fdata()), ref.get_fdata(), rtol=1e-5, atol=1e-7)
    assert ref.shape == image.shape
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-5)


def test_hand_made_compose_equals_esegeta_explain(tiny, cli_maps, tmp_path):
    keys = [f"image_{m}" for m in MAPS]
    pipeline = Compose([
        tiny.preprocessing,  # LoadImaged → … → EnsureTyped
        Explaind("image", tiny.network, methods=METHODS, targets="argmax:1", inferer=tiny.inferer_object),
        Invertd(keys=keys, transform=tiny.preprocessing, orig_keys="image", nearest_interp=False),
        *[SaveImaged(keys=key, output_dir=str(tmp_path), output_postfix=name, separate_folder=False, resample=False)
          for key, name in zip(keys, MAPS)],
    ])
    for sample in tiny.samples:
        data = pipeline({"image": str(sample)})
        stem = sample.name.split(".")[0]
        for key, name in zip(keys, MAPS):
            assert data[key].applied_operations == [] and data[key].shape[0] == 1
            written = tmp_path / f"{stem}_{name}.nii.gz"
            _assert_same_file(written, cli_maps / stem / f"{name}.nii.gz", sample)
            written.unlink()


def test_handler_equals_cli_and_batch_two_equals_batch_one(tiny, cli_maps, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the evaluator's prediction must be reused, not recomputed")

    monkeypatch.setattr(esegeta_monai.maps, "predict", forbidden)
    for batch_size in (2, 1):
        out = tmp_path / f"batch{batch_size}"
        loader = DataLoader(Dataset([{"image": str(s)} for s in tiny.samples], transform=tiny.preprocessing), batch_size=batch_size)
        evaluator = SupervisedEvaluator(torch.device("cpu"), loader, tiny.network, inferer=tiny.inferer_object)
        handler = ExplainHandler(methods=METHODS, targets=["argmax:1"], output_dir=out, preprocessing=tiny.preprocessing)
        handler.attach(evaluator)
        with torch.no_grad():  # as a bundle's evaluator runs: gradients are enabled inside the handler
            evaluator.run()
        records = json.loads((out / "esegeta_manifest.json").read_text())["records"]
        assert sorted(r["status"] for r in records) == ["ok"] * 4
    for sample in tiny.samples:
        stem = sample.name.split(".")[0]
        for name in MAPS:
            for batch in ("batch1", "batch2"):
                _assert_same_file(tmp_path / batch / stem / f"{name}.nii.gz", cli_maps / stem / f"{name}.nii.gz", sample)


def test_handler_resumes_a_second_evaluation(tiny, tmp_path):
    """A second evaluation into the same folder explains nothing again: same journal, same files."""
    def evaluate(methods, **options):
        loader = DataLoader(Dataset([{"image": str(s)} for s in tiny.samples], transform=tiny.preprocessing), batch_size=2)
        evaluator = SupervisedEvaluator(torch.device("cpu"), loader, tiny.network, inferer=tiny.inferer_object)
        ExplainHandler(methods=methods, targets=["argmax:1"], output_dir=tmp_path, preprocessing=tiny.preprocessing,
                       **options).attach(evaluator)
        with torch.no_grad():
            evaluator.run()
        lines = (tmp_path / "esegeta_journal.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if json.loads(line)["type"] == "record"]

    first = evaluate(["saliency"])
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}
    assert len(first) == 2 and len(files) == 2
    assert len(evaluate(["saliency"])) == 2  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")} == files
    assert len(evaluate(["saliency", "input_x_gradient"])) == 4  # only the new method's maps
    assert len(evaluate(["saliency"], force=True)) == 6
    records = json.loads((tmp_path / "esegeta_manifest.json").read_text())["records"]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    # `esegeta report` on the handler's folder: figures and scenes into its journal, and the HTML
    assert main(["-q", "report", str(tmp_path)]) == 0
    added = [json.loads(line) for line in (tmp_path / "esegeta_journal.jsonl").read_text().splitlines()]
    figures = [e for e in added if e.get("kind") == "figure"]
    assert len(figures) == 6 and all(e["status"] == "ok" for e in figures)  # 4 maps, 2 comparisons
    assert (tmp_path / "report" / "index.html").is_file() and not (tmp_path / "manifest.json").exists()


def test_transform_batch_two_equals_two_batch_one(tiny):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 24, 20, 28)
    explain = Explain(tiny.network, {"name": "integrated_gradients", "n_steps": 4}, "argmax:1", inferer=tiny.inferer_object, batched=True)
    batch = explain(x)
    single = Explain(tiny.network, {"name": "integrated_gradients", "n_steps": 4}, "argmax:1", inferer=tiny.inferer_object)
    torch.testing.assert_close(batch, torch.stack([single(x[0]), single(x[1])]), rtol=1e-5, atol=1e-7)


def test_multichannel_inputs_give_per_channel_maps_and_their_sum():
    torch.manual_seed(0)
    net = UNet(3, 4, 2, (4, 8), (2,), num_res_units=0).eval()  # e.g. four MRI sequences
    inferer = SlidingWindowInferer((16, 16, 16), overlap=0.25)
    image = torch.rand(4, 20, 18, 22)
    per_channel = Explaind("image", net, targets="argmax:1", inferer=inferer, channel_reduce="none")({"image": image})
    summed = Explaind("image", net, targets="argmax:1", inferer=inferer, output_key="{method}")({"image": image})
    assert per_channel["image_saliency_argmax1"].shape == (4, 20, 18, 22) and summed["saliency"].shape == (1, 20, 18, 22)
    # saliency takes |·| of each input channel's gradient; the sum is taken after
    torch.testing.assert_close(per_channel["image_saliency_argmax1"].sum(0, keepdim=True), summed["saliency"])


def test_transform_errors_are_clear(tiny):
    with pytest.raises(MethodError, match="did you mean 'saliency'"):
        Explaind("image", tiny.network, methods=["salency"])
    with pytest.raises(MethodError, match="n_stepz"):
        Explaind("image", tiny.network, methods=[{"name": "integrated_gradients", "n_stepz": 3}])
    with pytest.raises(ConfigError, match="output_key"):
        Explaind("image", tiny.network, output_key="{image}_{method}")
    with pytest.raises(ConfigError, match="roi_sise"):
        Explain(tiny.network, roi_sise=(8, 8, 8))
    with pytest.raises(EsegetaError, match="channel first"):
        Explain(tiny.network, inferer=tiny.inferer_object)(torch.rand(16, 16, 16))
    # a method failing at run time names the image; on_error="skip" goes on with the others
    d = {"image": torch.rand(1, 16, 16, 16)}
    methods = [{"name": "gradcam", "layer": "no.such.layer"}, "saliency"]
    with pytest.raises(EsegetaError, match=r"image: gradcam argmax1 failed: .*no layer 'no.such.layer'"):
        Explaind("image", tiny.network, methods=methods)(d)
    out = Explaind("image", tiny.network, methods=methods, on_error="skip")(d)
    assert "image_saliency_argmax1" in out and "image_gradcam_argmax1" not in out


def test_handler_records_failures_and_goes_on(tiny, tmp_path):
    loader = DataLoader(Dataset([{"image": str(s)} for s in tiny.samples], transform=tiny.preprocessing), batch_size=1)
    evaluator = SupervisedEvaluator(torch.device("cpu"), loader, tiny.network, inferer=tiny.inferer_object)
    with pytest.raises(MethodError, match="needs layer"):  # a config error fails before any image
        ExplainHandler(methods=["saliency", "gradcam"], output_dir=tmp_path)
    methods = ["saliency", {"name": "gradcam", "layer": "no.such.layer"}]
    ExplainHandler(methods=methods, targets=["argmax:1"], output_dir=tmp_path, preprocessing=tiny.preprocessing).attach(evaluator)
    evaluator.run()
    records = json.loads((tmp_path / "esegeta_manifest.json").read_text())["records"]
    assert sorted((r["method"], r["status"]) for r in records) == sorted([("saliency", "ok"), ("gradcam", "failed")] * 2)
    failed = [r for r in records if r["status"] == "failed"]
    assert all("no.such.layer" in r["error"] for r in failed) and (tmp_path / "blob" / "saliency_argmax1.nii.gz").is_file()


def test_swin_compat_override_builds_the_network(tmp_path):
    if not ZOO.is_dir():
        pytest.skip("model-zoo configs not available")
    bundle = tmp_path / "swin"
    shutil.copytree(ZOO / "swin_unetr_btcv_segmentation" / "configs", bundle / "configs")
    with pytest.raises(BundleError, match="swin_unetr_compat"):
        load_bundle(bundle)
    # with the shipped override the network builds; what is missing next is only the weights file
    with pytest.raises(BundleError, match=r"models/model.pt \(read by `checkpointloader`\): weights file not found"):
        load_bundle(bundle, extra_configs=["swin_unetr_compat"])
    assert shipped_config("swin_unetr_compat") == shipped_config("swin_unetr_compat.json")


def _ct_like_volume(path: Path) -> Path:
    """A CT-like volume in Hounsfield units (air, body, a brighter organ), LPS, anisotropic."""
    rng = np.random.default_rng(0)
    shape = (60, 52, 20)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    hu = np.full(shape, -1000.0)
    hu[(grid[0] ** 2 + grid[1] ** 2) < 0.8] = 40.0
    hu[((grid[0] - 0.3) ** 2 + (grid[1] + 0.2) ** 2 + grid[2] ** 2 / 4) < 0.05] = 110.0
    hu += rng.normal(0, 15, shape)
    affine = np.array([[-0.9, 0, 0, 120.0], [0, -0.9, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), str(path))
    return path


@pytest.mark.skipif(not ZOO.is_dir(), reason="model-zoo configs not available")
def test_monai_bundle_run_with_the_shipped_override_on_spleen(tmp_path):
    pytest.importorskip("fire")
    bundle = tmp_path / "spleen_ct_segmentation"
    shutil.copytree(ZOO / "spleen_ct_segmentation" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    net = load_bundle(bundle, build_network=False).parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    data = tmp_path / "data" / "imagesTs"
    data.mkdir(parents=True)
    image = _ct_like_volume(data / "ct_001.nii.gz")
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", f"['{bundle}/configs/inference.json', '{shipped_config()}']",
        "--bundle_root", str(bundle), "--dataset_dir", str(tmp_path / "data"),
        "--dataloader#num_workers", "0", "--evaluator#amp", "False",
        "--explain#methods", "['saliency', {'name': 'integrated_gradients', 'n_steps': 2, 'as': 'ig'}]",
    ]
    completed = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    folder = bundle / "eval" / "ct_001"
    segmentation = folder / "ct_001_trans.nii.gz"  # the bundle's own output
    assert segmentation.is_file()
    source = nib.load(str(image))
    for name in ("saliency_argmax1", "ig_argmax1"):
        written = nib.load(str(folder / f"{name}.nii.gz"))
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        assert np.isfinite(written.get_fdata()).all()
    records = json.loads((bundle / "eval" / "esegeta_manifest.json").read_text())["records"]
    assert [r["status"] for r in records] == ["ok", "ok"]


def test_batched_metatensors_keep_each_images_meta(tiny):
    """A collated batch of MetaTensors (e.g. after a DataLoader) comes back with each image's affine."""
    from monai.data import decollate_batch, list_data_collate

    items = [tiny.preprocessing({"image": str(s)}) for s in tiny.samples]
    batch = list_data_collate(items)["image"]
    maps = Explain(tiny.network, "saliency", "argmax:1", inferer=tiny.inferer_object, batched=True)(batch)
    for item, single in zip(items, decollate_batch(maps)):
        assert single.shape == (1, *item["image"].shape[1:])
        torch.testing.assert_close(single.affine, item["image"].affine)
        assert len(single.applied_operations) == len(item["image"].applied_operations)
