"""The lesion_cls_2d_demo bundle: generator, shipped weights, its own inference, and maps that
look at the lesion because the model was trained (not by construction)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from esegeta_monai.monai.bundle import load_bundle
from esegeta_monai.apps.cli import main
from esegeta_monai.apps.config import MethodSpec, RunConfig
from training.lesions2d import make_lesion_image, mask_path_for
from esegeta_monai.monai.io.png import read_png_map
from esegeta_monai.apps.cohort import run_explanations

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lesion_cls_2d_demo"
SAMPLES = {"lesion_0": BUNDLE / "sample" / "lesion_0.png", "lesion_1": BUNDLE / "sample" / "lesion_1.nii.gz"}
ABSENT = BUNDLE / "sample" / "absent_2.png"


def _mask(path: Path) -> np.ndarray:
    """The sample's lesion mask as MONAI loads the image: ``(x, y)``."""
    mask_file = mask_path_for(path)
    if mask_file.endswith(".png"):
        return np.asarray(Image.open(mask_file)).T > 0
    return np.asarray(nib.load(mask_file).dataobj) > 0


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE, device="cpu")


def _maps(bundle, methods, out: Path) -> dict[tuple[str, str], np.ndarray]:
    config = RunConfig(bundle=str(BUNDLE), images=[str(p) for p in SAMPLES.values()], methods=methods,
                       targets=["class:1"], out=str(out), device="cpu")
    result = run_explanations(config, bundle=bundle)
    assert result.ok, result.records
    return {(Path(r.image).name.split(".")[0], r.method): nib.load(r.output).get_fdata() for r in result.records}


def _share_ratio(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution inside the lesion, over the lesion's share of the image."""
    positive = np.clip(attribution, 0, None)
    return float(positive[mask].sum() / positive.sum() / mask.mean())


def test_generator_is_deterministic_and_marks_the_lesion():
    a, mask = make_lesion_image((64, 64), seed=11, lesion=True)
    b, same = make_lesion_image((64, 64), seed=11, lesion=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask, same)
    assert 0.003 < mask.mean() < 0.1
    tissue = np.median(a[mask == 0])
    assert abs(np.median(a[mask == 1]) - tissue) > 0.1  # brighter or darker than the tissue
    _, none = make_lesion_image((64, 64), seed=11, lesion=False)
    assert not none.any()


def test_bundle_reads_as_a_whole_image_2d_classifier(bundle):
    assert bundle.inferer["roi_size"] is None  # SimpleInferer: the whole image at once
    assert bundle.spatial_dims == 2 and bundle.in_channels == 1
    assert bundle.class_names == {0: "absent", 1: "lesion"}
    assert [p.name for p in bundle.samples] == ["lesion_0.png", "lesion_1.nii.gz", "absent_2.png"]
    relus = [m for m in bundle.network.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)  # guided backprop and DeepLift need nn.ReLU
    assert sum(p.numel() for p in bundle.network.parameters()) < 200_000
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_shipped_weights_classify_fresh_heldout_images(bundle):
    """Seeds never used in training or in the shipped evaluation, through the bundle's preprocessing."""
    from training.train_lesion2d import evaluate, make_dataset

    data_cfg = {"shape": [64, 64], "lesion_options": {}}
    images, labels = make_dataset(700_000, 200, data_cfg, bundle.preprocessing)
    metrics = evaluate(copy.deepcopy(bundle.network), images, labels)
    assert metrics["accuracy"] >= 0.95 and metrics["auc"] >= 0.98, metrics
    documented = json.loads((BUNDLE / "docs" / "training_metrics.json").read_text())["heldout"]
    assert documented["accuracy"] >= 0.95 and documented["n"] >= 500


def test_bundle_inference_config_runs_and_classifies_the_samples(tmp_path):
    """What `python -m monai.bundle run --config_file configs/inference.yaml` does, in process."""
    from monai.bundle import run

    run(config_file=str(BUNDLE / "configs" / "inference.yaml"), bundle_root=str(BUNDLE), output_dir=str(tmp_path),
        device="$torch.device('cpu')")
    with open(tmp_path / "predictions.csv") as f:
        p_lesion = {Path(row[0]).name: float(row[2]) for row in csv.reader(f)}
    assert set(p_lesion) == {"lesion_0.png", "lesion_1.nii.gz", "absent_2.png"}
    assert p_lesion["lesion_0.png"] > 0.5 and p_lesion["lesion_1.nii.gz"] > 0.5 and p_lesion["absent_2.png"] < 0.5


def test_maps_concentrate_on_the_lesion_and_need_the_training(bundle, tmp_path):
    methods = [MethodSpec("saliency"), MethodSpec("guided_backprop"), MethodSpec("gradcam", {"layer": "features.denseblock2"})]
    trained = _maps(bundle, methods, tmp_path / "trained")
    network = copy.deepcopy(bundle.network)
    torch.manual_seed(0)
    for module in network.modules():  # a randomised-weights copy: fresh initialisation
        for reset in ("reset_parameters", "reset_running_stats"):
            if hasattr(module, reset):
                getattr(module, reset)()
    randomised = _maps(dataclasses.replace(bundle, network=network.eval()), methods[:1], tmp_path / "random")

    for stem, image in SAMPLES.items():
        mask = _mask(image)
        for method in ("saliency", "guided_backprop"):
            ratio = _share_ratio(trained[stem, method], mask)
            print(f"{stem} {method}: lesion share ratio {ratio:.1f} (lesion {mask.mean():.3f} of the image)")
            assert ratio >= 3.0, (stem, method, ratio)  # measured 8.7-28.5
        cam = trained[stem, "gradcam"]  # an 8x8 map upsampled: its peak, not its share, is what to check
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert ndimage.distance_transform_edt(~mask)[peak] <= 4.0, (stem, peak)

        random_ratio = _share_ratio(randomised[stem, "saliency"], mask)
        rho = spearmanr(trained[stem, "saliency"].ravel(), randomised[stem, "saliency"].ravel()).statistic
        print(f"{stem} randomised saliency: ratio {random_ratio:.1f}, rank correlation with trained {rho:.3f}")
        assert rho < 0.5 and random_ratio < 2.0, (stem, rho, random_ratio)


def test_cli_writes_png_maps_with_the_input_size(tmp_path):
    out = tmp_path / "out"
    code = main(["explain", "--bundle", str(BUNDLE), "--target", "class:1", "--methods", "saliency",
                 "--format", "png", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    for stem, image in (*SAMPLES.items(), ("absent_2", ABSENT)):
        written = read_png_map(out / stem / "saliency_class1.png")
        assert written.shape == (64, 64) and written.min() >= 0 and written.max() > 0
    lesion_map = read_png_map(out / "lesion_0" / "saliency_class1.png")
    assert _share_ratio(lesion_map, _mask(SAMPLES["lesion_0"])) >= 3.0  # the PNG keeps the layout of the input
