"""Reading real MONAI model-zoo bundle configurations (random weights)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet
from monai.transforms import Compose

from esegeta_monai.monai.bundle import Bundle, load_bundle
from esegeta_monai.errors import BundleError

from zoo import ZOO  # noqa: E402
pytestmark = pytest.mark.skipif(not ZOO.is_dir(), reason="model-zoo configs not available")


def _copy_configs(name: str, dest: Path) -> Path:
    bundle = dest / name
    shutil.copytree(ZOO / name / "configs", bundle / "configs")
    return bundle


def _network_def(bundle: Path):
    parser = ConfigParser()
    parser.read_config(str(next((bundle / "configs").glob("inference.*"))))
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def spleen_state(tmp_path_factory):
    """The spleen UNet's random state dict, saved once for the module."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("spleen_weights")
    bundle = _copy_configs("spleen_ct_segmentation", folder)
    state = _network_def(bundle).state_dict()
    path = folder / "model.pt"
    torch.save(state, path)
    return state, path


@pytest.fixture()
def spleen(tmp_path, spleen_state):
    bundle = _copy_configs("spleen_ct_segmentation", tmp_path)
    (bundle / "models").mkdir()
    shutil.copy(spleen_state[1], bundle / "models" / "model.pt")
    return bundle


def test_spleen_loads(spleen, spleen_state):
    (spleen / "sample").mkdir()
    (spleen / "sample" / "case.nii.gz").write_bytes(b"")
    b = load_bundle(spleen)
    assert isinstance(b, Bundle) and b.root == spleen.resolve()
    assert isinstance(b.network, UNet) and not b.network.training
    loaded = b.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in spleen_state[0].items())
    assert b.inferer["roi_size"] == (96, 96, 96)
    assert b.inferer["overlap"] == 0.5 and b.inferer["sw_batch_size"] == 4
    assert b.inferer["mode"] == "constant"
    assert isinstance(b.preprocessing, Compose)
    assert b.image_key == "image"
    assert b.class_names == {0: "background", 1: "spleen"}
    assert b.channel_names == {0: "image"}
    assert (b.in_channels, b.spatial_dims, b.out_channels) == (1, 3, 2)
    assert b.samples == [spleen.resolve() / "sample" / "case.nii.gz"]
    assert b.metadata["name"] == "Spleen CT segmentation"
    assert b.parser.get_parsed_content("bundle_root") == str(spleen.resolve())
    assert b.parser.get_parsed_content("device") == torch.device("cpu")
    assert next(b.network.parameters()).device.type == "cpu"


def test_checkpoint_layouts_and_weights_option(spleen, spleen_state, tmp_path):
    elsewhere = tmp_path / "elsewhere.pt"
    torch.save({"model": spleen_state[0], "epoch": 3}, elsewhere)  # CheckpointSaver layout
    (spleen / "models" / "model.pt").unlink()
    b = load_bundle(spleen, weights=elsewhere, build_network=True)
    assert torch.equal(b.network.state_dict()["model.0.conv.unit0.conv.weight"],
                       spleen_state[0]["model.0.conv.unit0.conv.weight"])
    assert b.weights_path == elsewhere
    assert load_bundle(spleen, build_network=False).network is None  # no weights needed then


def test_weights_only_refuses_pickled_objects(spleen, spleen_state):
    torch.save({"state_dict": spleen_state[0], "extra": np.arange(3)}, spleen / "models" / "model.pt")
    with pytest.raises(BundleError, match=r"model.pt: .*weights-only.*weights_only=False"):
        load_bundle(spleen)
    assert isinstance(load_bundle(spleen, weights_only=False).network, UNet)


def test_missing_weights(spleen):
    (spleen / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"models/model.pt \(read by `checkpointloader`\): weights file not found.*weights=/--weights"):
        load_bundle(spleen)


def test_mismatched_weights(spleen):
    other = UNet(3, 1, 2, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    torch.save(other.state_dict(), spleen / "models" / "model.pt")
    with pytest.raises(BundleError) as info:
        load_bundle(spleen)
    msg = str(info.value)
    assert "model.pt" in msg and "`network_def`" in msg and "shape-mismatched" in msg
    assert "model.0.conv.unit0.conv.weight: file (8, 1, 3, 3, 3) vs network (16, 1, 3, 3, 3)" in msg
    fewer = UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=0, norm="batch")
    torch.save(fewer.state_dict(), spleen / "models" / "model.pt")
    with pytest.raises(BundleError, match=r"missing: .*unexpected: "):
        load_bundle(spleen)


def test_config_syntax_errors(spleen):
    config = spleen / "configs" / "inference.json"
    lines = config.read_text().splitlines()
    assert lines[5].rstrip().endswith(",")
    lines[5] = lines[5].rstrip()[:-1]  # drop a comma
    config.write_text("\n".join(lines))
    with pytest.raises(BundleError, match=r"inference.json: JSON syntax error at line 7"):
        load_bundle(spleen)
    config.unlink()
    (spleen / "configs" / "inference.yaml").write_text("network_def:\n  _target_: UNet\n   bad: [1, 2\n")
    with pytest.raises(BundleError, match=r"inference.yaml: YAML syntax error at line \d+"):
        load_bundle(spleen)


def test_missing_folders_and_configs(tmp_path, spleen):
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty: no configs/ folder"):
        load_bundle(tmp_path / "empty")
    (spleen / "configs" / "inference.json").rename(spleen / "configs" / "train.json")
    with pytest.raises(BundleError, match=r"no inference config.*config_file="):
        load_bundle(spleen)
    b = load_bundle(spleen, config_file="train.json", build_network=False)
    assert b.config_files == [(spleen / "configs" / "train.json").resolve()]


def test_missing_network_def(spleen):
    config = spleen / "configs" / "inference.json"
    content = json.loads(config.read_text())
    del content["network_def"], content["network"]
    config.write_text(json.dumps(content))
    with pytest.raises(BundleError, match=r"inference.json: no `network_def`"):
        load_bundle(spleen)


def test_inferer_missing_or_broken(spleen, caplog):
    config = spleen / "configs" / "inference.json"
    content = json.loads(config.read_text())
    content["inferer"]["roi_sizes"] = content["inferer"].pop("roi_size")
    config.write_text(json.dumps(content))
    broken = r"inference.json: `inferer` \(SlidingWindowInferer\) cannot be built.*remove `roi_sizes`"
    with pytest.raises(BundleError, match=broken):
        load_bundle(spleen, build_network=False)
    content["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": "@missing_roi"}
    config.write_text(json.dumps(content))
    with pytest.raises(BundleError, match=r"cannot build the inferer: `inferer` refers to `@missing_roi`, which the config does not define.*Fix"):
        load_bundle(spleen, build_network=False)
    del content["inferer"]
    config.write_text(json.dumps(content))
    with caplog.at_level(logging.WARNING):
        b = load_bundle(spleen, build_network=False)
    assert b.inferer["roi_size"] is None and "no `inferer` key" in caplog.text


def test_broken_network_def_names_key(spleen):
    config = spleen / "configs" / "inference.json"
    content = json.loads(config.read_text())
    content["network_def"]["strides"] = "@nowhere"
    config.write_text(json.dumps(content))
    with pytest.raises(BundleError, match=r"`network_def`.*nowhere"):
        load_bundle(spleen)


def test_swin_unetr_img_size_message(tmp_path):
    bundle = _copy_configs("swin_unetr_btcv_segmentation", tmp_path)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    msg = str(info.value)
    assert "inference.json" in msg and "`network_def`" in msg and "SwinUNETR" in msg
    assert "remove `img_size`" in msg and "remove_keys=['network_def#img_size']" in msg
    # the suggested fix works: the network builds, and the next problem is the absent weights
    with pytest.raises(BundleError, match=r"models/model.pt \(read by `checkpointloader`\): weights file not found"):
        load_bundle(bundle, remove_keys=["network_def#img_size"])


@pytest.mark.skipif(importlib.util.find_spec("itk") is not None, reason="itk is installed")
def test_swin_itk_reader_falls_back_to_reading_by_file_type(tmp_path):
    """Without itk, the bundle's ITKReader is dropped (and said so): NIfTI inputs are read by nibabel."""
    bundle = _copy_configs("swin_unetr_btcv_segmentation", tmp_path)
    b = load_bundle(bundle, build_network=False)
    assert isinstance(b.preprocessing, Compose) and len(b.class_names) == 14
    assert any("ITKReader" in note and "pip install itk" in note for note in b.notes)
    image = tmp_path / "ct.nii.gz"
    nib_affine = np.diag([0.8, 0.8, 2.5, 1.0])
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.zeros((20, 22, 8), np.float32), nib_affine), str(image))
    loaded = b.preprocessing({"image": str(image)})["image"]
    assert loaded.meta["filename_or_obj"].endswith("ct.nii.gz") and loaded.ndim == 4


def test_missing_python_package_names_the_pip_package(tmp_path, monkeypatch):
    """A module missing while the network is built (MONAI's OptionalImportError wording) is named with
    its pip package, and the fix works once the module is there."""
    bundle = _copy_configs("spleen_ct_segmentation", tmp_path)
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("")
    (bundle / "scripts" / "nets.py").write_text(
        "from monai.utils import optional_import\n"
        "Rearrange, _ = optional_import('einops_not_installed_here.layers.torch', name='Rearrange')\n"
        "def Net(**kwargs):\n    return Rearrange('b c -> b c')\n")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle, overrides={"network_def": {"_target_": "scripts.nets.Net"}})
    msg = str(info.value)
    assert "needs the Python package `einops-not-installed-here`" in msg and "pip install einops-not-installed-here" in msg
    assert "the package named above" not in msg


def test_bundle_scripts_are_importable_and_do_not_leak(tmp_path):
    """`_target_: scripts.…` resolves with the bundle root on the import path, only while reading:
    two bundles with their own `scripts` package each get theirs."""
    import sys

    built = []
    for number, channels in enumerate((4, 6)):
        bundle = _copy_configs("spleen_ct_segmentation", tmp_path / str(number))
        (bundle / "scripts").mkdir()
        (bundle / "scripts" / "__init__.py").write_text("")
        (bundle / "scripts" / "nets.py").write_text(
            "from monai.networks.nets import UNet\n"
            f"def Net():\n    return UNet(3, 1, 2, ({channels}, 8), (2,), num_res_units=0)\n")
        (bundle / "models").mkdir()
        overrides = {"network_def": {"_target_": "scripts.nets.Net"}}
        torch.save(_scripted_state(bundle), bundle / "models" / "model.pt")
        built.append(load_bundle(bundle, overrides=overrides).network)
        assert "scripts" not in sys.modules and str(bundle.resolve()) not in sys.path
    assert [net.model[0].conv.out_channels for net in built] == [4, 6]


def _scripted_state(bundle: Path) -> dict:
    import sys

    sys.path.insert(0, str(bundle))
    try:
        from scripts.nets import Net

        return Net().state_dict()
    finally:
        sys.path.remove(str(bundle))
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]


def test_pancreas_dints_extra_file_message_and_cpu_mapping(tmp_path):
    bundle = _copy_configs("pancreas_ct_dints_segmentation", tmp_path)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    msg = str(info.value)
    assert "inference.yaml" in msg and "`arch_ckpt`" in msg and "torch.load" in msg
    assert str(bundle.resolve() / "models" / "search_code_18590.pt") in msg and "does not exist" in msg
    # present (numpy arrays, as the zoo ships it): the CUDA map_location is mapped to the CPU when there is no
    # GPU, and the one remaining refusal (weights-only loading of numpy arrays) gives a fix that works
    (bundle / "models").mkdir()
    torch.save({"arch_code_a": np.ones((12, 10)), "arch_code_c": np.zeros((12, 10)), "node_a": np.ones((13, 4))},
               bundle / "models" / "search_code_18590.pt")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    msg = str(info.value)
    assert "weights-only" in msg and "weights_only=False" in msg
    fix = msg.split("overrides=")[1].split(" (full")[0]
    overrides = eval(fix)  # the message's own override, as a user would paste it
    with pytest.raises(BundleError, match=r"models/model.pt \(read by `checkpointloader`\): weights file not found"):
        load_bundle(bundle, overrides=overrides)  # the network built on the CPU; next: the weights
    b = load_bundle(bundle, build_network=False)
    if not torch.cuda.is_available():
        assert any("`arch_ckpt`" in n and "CPU" in n for n in b.notes)
        assert any("`dints_space#device`" in n for n in b.notes)


def test_weights_where_the_checkpoint_loader_reads_them(spleen, spleen_state):
    """No models/model.pt: the config's CheckpointLoader names the file and, through its load_dict,
    the key that holds the network's state dict."""
    (spleen / "models" / "model.pt").unlink()
    other = {k: torch.zeros_like(v) for k, v in spleen_state[0].items()}
    torch.save({"teacher": other, "student": spleen_state[0], "epoch": 7}, spleen / "models" / "distilled.pt")
    overrides = {"checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/distilled.pt'",
                                      "load_dict": {"student": "@network"}}}
    b = load_bundle(spleen, overrides=overrides)
    assert b.weights_path.name == "distilled.pt"
    name = "model.0.conv.unit0.conv.weight"
    assert torch.equal(b.network.state_dict()[name], spleen_state[0][name])


def test_torchscript_weights(spleen, spleen_state):
    """A bundle shipping only models/model.ts: its parameters and buffers are loaded into network_def."""
    (spleen / "models" / "model.pt").unlink()
    network = _network_def(spleen)
    network.load_state_dict(spleen_state[0])
    torch.jit.save(torch.jit.script(network.eval()), str(spleen / "models" / "model.ts"))
    b = load_bundle(spleen)
    assert b.weights_path.name == "model.ts" and isinstance(b.network, UNet)
    name = "model.0.conv.unit0.conv.weight"
    assert torch.equal(b.network.state_dict()[name], spleen_state[0][name])
