"""The lesion_cls_3d_demo bundle: generator, shipped weights and their recorded held-out accuracy,
its own inference, the command line on NIfTI samples with non-identity affines, and maps that find
the lesion because the model was trained (not by construction)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from esegeta_monai import Explainer
from esegeta_monai.apps.cli import main
from esegeta_monai.monai.bundle import load_bundle
from training.lesion_cls import evaluate, make_dataset, preprocess_arrays
from training.lesions import mask_path_for
from training.lesions3d import make_lesion_volume

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lesion_cls_3d_demo"
SAMPLES = ["lesion_0.nii.gz", "lesion_1.nii.gz", "absent_2.nii.gz"]
METRICS = json.loads((BUNDLE / "docs" / "training_metrics.json").read_text())


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE, device="cpu")


def _randomised(network: torch.nn.Module) -> torch.nn.Module:
    """A copy with every layer re-initialised (weights and batch-norm statistics)."""
    network = copy.deepcopy(network)
    torch.manual_seed(0)
    for module in network.modules():
        for reset in ("reset_parameters", "reset_running_stats"):
            if hasattr(module, reset):
                getattr(module, reset)()
    return network.eval()


def _peak(attribution: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(attribution)), attribution.shape))


def test_generator_is_deterministic_and_marks_the_lesion():
    a, mask = make_lesion_volume((32, 32, 32), seed=11, lesion=True)
    b, same = make_lesion_volume((32, 32, 32), seed=11, lesion=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask, same)
    assert a.shape == (32, 32, 32) and 0.001 < mask.mean() < 0.03
    assert abs(np.median(a[mask == 1]) - np.median(a[mask == 0])) > 0.1  # brighter or darker than the tissue
    _, none = make_lesion_volume((32, 32, 32), seed=11, lesion=False)
    assert not none.any()
    with pytest.raises(ValueError, match="3 dimensions"):
        make_lesion_volume((32, 32))


def test_bundle_reads_as_a_whole_volume_3d_classifier_and_is_listed(bundle, tmp_path):
    from esegeta_monai.apps.gui.bundles import BundleCatalog
    from esegeta_monai.apps.gui.paths import Roots

    assert bundle.inferer["roi_size"] is None  # SimpleInferer: the whole volume at once
    assert bundle.spatial_dims == 3 and bundle.in_channels == 1
    assert bundle.class_names == {0: "absent", 1: "lesion"}
    assert [p.name for p in bundle.samples] == SAMPLES
    for name in SAMPLES:  # NIfTI with non-identity affines (one in LPS, one anisotropic)
        assert not np.allclose(nib.load(BUNDLE / "sample" / name).affine, np.eye(4))
    relus = [m for m in bundle.network.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)  # guided backprop and DeepLift need nn.ReLU
    assert sum(p.numel() for p in bundle.network.parameters()) == METRICS["parameters"] < 200_000
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 2_000_000
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    listed = {p["path"]: p for p in BundleCatalog(Roots([BUNDLE.parent], tmp_path / "out")).list()}
    entry = listed[str(BUNDLE.resolve())]
    assert entry["classifier"] and entry["spatial_dims"] == 3 and len(entry["samples"]) == 3


def test_recorded_heldout_accuracy_reproduces(bundle):
    """100 of the 1000 recorded held-out seeds (a slice with four errors) give exactly the recorded errors."""
    heldout = METRICS["heldout"]
    assert heldout["n"] == 1000 and heldout["n_lesion"] == 500 and heldout["accuracy"] >= 0.95 and heldout["auc"] >= 0.99
    assert heldout["accuracy"] == round(1 - len(heldout["error_seeds"]) / heldout["n"], 4)
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert meta == {"accuracy_heldout": heldout["accuracy"], "auc_heldout": heldout["auc"]}

    first = heldout["seeds"][0] + 200
    images, labels = make_dataset(make_lesion_volume, first, 100, METRICS["config"]["data"], bundle.preprocessing)
    metrics = evaluate(copy.deepcopy(bundle.network), images, labels)
    recorded = [s for s in heldout["error_seeds"] if first <= s < first + 100]
    assert len(recorded) == 4 and [first + i for i in metrics["wrong"]] == recorded


def test_bundle_inference_config_classifies_the_samples_as_recorded(tmp_path):
    """What `python -m monai.bundle run --config_file configs/inference.yaml` does, in process."""
    from monai.bundle import run

    run(config_file=str(BUNDLE / "configs" / "inference.yaml"), bundle_root=str(BUNDLE), output_dir=str(tmp_path),
        device="$torch.device('cpu')")
    with open(tmp_path / "predictions.csv") as f:
        p_lesion = {Path(row[0]).name: float(row[2]) for row in csv.reader(f)}
    recorded = {Path(s["path"]).name: s for s in METRICS["samples"]}
    assert set(p_lesion) == set(recorded) == set(SAMPLES)
    for name, p in p_lesion.items():
        assert p == pytest.approx(recorded[name]["p_lesion"], abs=1e-3)
        assert (p > 0.5) == recorded[name]["lesion"]


@pytest.fixture(scope="module")
def lesion_volumes(bundle):
    """20 fresh lesion volumes (seeds never trained on), preprocessed, and their masks (the same 32³ grid)."""
    volumes = [make_lesion_volume((32, 32, 32), seed=s, lesion=True) for s in range(800_000, 800_040, 2)]
    return torch.from_numpy(preprocess_arrays(bundle.preprocessing, [v[0] for v in volumes])), [v[1] > 0 for v in volumes]


def test_guided_backprop_peaks_in_the_lesion_only_when_trained(bundle, lesion_volumes):
    """Known peak over 20 fresh lesion volumes; with re-initialised weights the peak leaves the
    lesion and the map's ranks change (a randomisation test, Adebayo et al. 2018)."""
    x, masks = lesion_volumes
    trained = Explainer(bundle.network, "guided_backprop", "class:1")(x)[:, 0].numpy()
    randomised = Explainer(_randomised(bundle.network), "guided_backprop", "class:1")(x)[:, 0].numpy()

    hits = sum(bool(m[_peak(a)]) for a, m in zip(trained, masks))
    random_hits = sum(bool(m[_peak(a)]) for a, m in zip(randomised, masks))
    rho = [spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic for a, b in zip(trained, randomised)]
    print(f"peak in the lesion: trained {hits}/20, randomised {random_hits}/20; rank correlation max {max(rho):.2f}")
    assert hits >= 18 and random_hits <= 5 and max(rho) < 0.5, (hits, random_hits, max(rho))  # measured 19, 1, 0.21


def test_cli_maps_come_back_on_each_sample_grid_and_find_the_lesion(tmp_path):
    out = tmp_path / "out"
    code = main(["explain", "--bundle", str(BUNDLE), "--target", "class:1", "--methods", "saliency,guided_backprop",
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    for name in SAMPLES:
        stem, image = name.split(".")[0], nib.load(BUNDLE / "sample" / name)
        prediction = json.loads((out / stem / "prediction.json").read_text())
        assert prediction["kind"] == "classification" and prediction["predicted"] == int(stem.startswith("lesion"))
        maps = {m: nib.load(out / stem / f"{m}_class1.nii.gz") for m in ("saliency", "guided_backprop")}
        for written in maps.values():  # undone Orientationd (LPS sample) and Resized: the input's grid
            assert written.shape == image.shape and np.allclose(written.affine, image.affine, atol=1e-5)
        if stem.startswith("lesion"):
            mask = np.asarray(nib.load(mask_path_for(BUNDLE / "sample" / name)).dataobj) > 0
            assert mask[_peak(maps["guided_backprop"].get_fdata())], stem
            saliency = np.abs(maps["saliency"].get_fdata())
            ratio = saliency[mask].sum() / saliency.sum() / mask.mean()
            print(f"{stem}: |saliency| in the lesion {ratio:.1f}x its share of the volume")
            assert ratio >= 2.0, (stem, ratio)  # measured 5.7 and 2.5


def test_gradcam_of_the_first_dense_block_points_away_from_the_lesion(bundle, lesion_volumes):
    """A documented caveat: on this model Grad-CAM's channel weights (mean gradients) give the lesion
    a negative sum, so the rectified map never peaks there and the unrectified one has its minimum there."""
    x, masks = lesion_volumes
    cam = Explainer(bundle.network, "layer_gradcam", "class:1", layer="features.denseblock1", relu_attributions=False)(x)[:, 0].numpy()
    peaks = sum(bool(m[np.unravel_index(np.argmax(a), a.shape)]) for a, m in zip(cam, masks))
    troughs = sum(bool(m[np.unravel_index(np.argmin(a), a.shape)]) for a, m in zip(cam, masks))
    assert peaks <= 2 and troughs >= 10, (peaks, troughs)  # measured 0 and 14 of 20
