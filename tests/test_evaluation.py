"""Evaluation of explanations: Captum parity of infidelity and sensitivity, deletion/insertion
ordering on a model with a known answer, localisation, and cascading randomisation that tells
a weight-dependent method from an edge detector."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max
from captum.metrics._core.sensitivity import default_perturb_func

from esegeta_monai import Explainer
from esegeta_monai.errors import MethodError
from esegeta_monai.evaluation import cascading_randomisation, deletion_insertion, infidelity, localisation, metric_options, sensitivity
from esegeta_monai.evaluation.robustness import noise_perturbation
from esegeta_monai.methods import Method
from esegeta_monai.methods.registry import _REGISTRY, register
from esegeta_monai.core.targets import ArgmaxRegion, ClassScore


def test_infidelity_and_sensitivity_equal_captum_on_a_whole_image(classifier2d):
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(classifier2d, "saliency", ClassScore(1), abs=False)
    attribution = explainer(x)
    ours = infidelity(explainer, x, attribution, n_samples=6, noise_std=1.0, per_eval=4, seed=3)
    torch.manual_seed(3)
    reference = captum_infidelity(lambda b: classifier2d(b)[:, 1], noise_perturbation(1.0), x, attribution,
                                  n_perturb_samples=6, max_examples_per_batch=4)
    assert ours["n_samples"] == 6 and ours["seed"] == 3 and float(reference[0]) > 1e-4
    assert ours["infidelity"] == pytest.approx(float(reference[0]), rel=1e-4)

    ours = sensitivity(explainer, x, n_samples=5, radius=0.05, seed=4)
    torch.manual_seed(4)
    reference = sensitivity_max(lambda b: Saliency(classifier2d).attribute(b, target=1, abs=False), x,
                                perturb_func=default_perturb_func, perturb_radius=0.05, n_perturb_samples=5, max_examples_per_batch=1)
    assert ours["sensitivity"] == pytest.approx(float(reference[0]), rel=1e-5)
    for per_eval in (2, 5):  # explanations batched: the same draws, the same value (it was √per_eval too large)
        batched = sensitivity(explainer, x, n_samples=5, radius=0.05, seed=4, per_eval=per_eval)
        assert batched["sensitivity"] == pytest.approx(ours["sensitivity"], rel=1e-5)


def test_infidelity_through_windows_re_runs_only_touched_windows(unet3d, volume):
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", ArgmaxRegion(1), abs=False, roi_size=(16, 16, 16), overlap=0.5)
    attribution = explainer(x)
    whole = infidelity(explainer, x, attribution, n_samples=4, noise_std=0.05)
    corner = infidelity(explainer, x, attribution, n_samples=4, noise_std=0.05, roi=[(0, 6), (0, 6), (0, 6)])
    assert np.isfinite(whole["infidelity"]) and np.isfinite(corner["infidelity"]) and corner["roi"] == [[0, 6], [0, 6], [0, 6]]
    with pytest.raises(MethodError, match="one image at a time"):
        infidelity(explainer, volume, explainer(volume))


class RegionSum(torch.nn.Module):
    """Class 1 scores the sum of the image inside a known box: the ideal map is that box."""

    def __init__(self, box):
        super().__init__()
        self.box = box
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        inside = x[(slice(None), slice(None), *self.box)].flatten(1).sum(1) * self.scale
        return torch.stack([-inside, inside], 1)


def _ideal_random_inverted(box):
    """A seeded 16×16 input and three maps of it: the input inside ``box`` (ideal), noise, and minus the ideal."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16) + 0.5
    ideal = torch.zeros_like(x)
    ideal[(slice(None), slice(None), *box)] = x[(slice(None), slice(None), *box)]
    return x, {"ideal": ideal, "random": torch.rand_like(x), "inverted": -ideal}


def test_deletion_and_insertion_rank_ideal_random_and_inverted_maps():
    box = (slice(2, 8), slice(3, 9))
    net = RegionSum(box)
    x, maps = _ideal_random_inverted(box)
    explainer = Explainer(net, "saliency", ClassScore(1))
    curves = {name: deletion_insertion(explainer, x, m, steps=16) for name, m in maps.items()}
    deletion = {name: c["deletion_auc"] for name, c in curves.items()}
    insertion = {name: c["insertion_auc"] for name, c in curves.items()}
    assert deletion["ideal"] < deletion["random"] < deletion["inverted"]
    assert insertion["ideal"] > insertion["random"] > insertion["inverted"]
    assert curves["ideal"]["deletion"][0] == pytest.approx(1.0) and curves["ideal"]["deletion"][-1] == pytest.approx(0.0, abs=1e-6)
    blurred = deletion_insertion(explainer, x, maps["ideal"], steps=4, fill="blur")
    assert len(blurred["insertion"]) == 5


def test_localisation_scores():
    label = np.zeros((12, 12))
    label[4:7, 4:7] = 1
    inside = localisation(torch.as_tensor(label * 2.0), label, dilation=0)
    assert inside["share_inside"] == 1.0 and inside["rank_auc"] > 0.99 and inside["pointing"]
    outside = localisation(torch.as_tensor(1.0 - label), label, dilation=0)
    assert outside["share_inside"] == 0.0 and outside["rank_auc"] < 0.01 and not outside["pointing"]
    assert localisation(torch.as_tensor(label), label, dilation=1)["label_share"] == pytest.approx(21 / 144)  # a cross grows 3×3 to 21


class EdgeDetector(Method):
    """A 'method' that ignores the network: the gradient magnitude of the image (test only)."""

    name = "test_edge_detector"
    family = "test"
    params = {}

    def run(self, window_pass, inputs, options):
        grads = torch.gradient(inputs, dim=tuple(range(2, inputs.ndim)))
        return torch.stack(grads).pow(2).sum(0).sqrt()


@pytest.fixture
def edge_detector():
    register(EdgeDetector)
    yield EdgeDetector.name
    _REGISTRY.pop(EdgeDetector.name)


def test_cascading_randomisation_tells_saliency_from_an_edge_detector(edge_detector):
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation

    bundle = load_bundle(Path(__file__).resolve().parents[1] / "bundles" / "vessel_mra_demo")
    x = load_for_explanation(bundle.samples[0], bundle.preprocessing)["image"][None].as_tensor()[:, :, 16:80, 16:80, :64]
    before = copy.deepcopy(bundle.network.state_dict())
    results = {}
    for method in ("saliency", edge_detector):
        steps = cascading_randomisation(bundle.network, lambda model: Explainer(model, method, "argmax:1", roi_size=(64,) * 3)(x),
                                        torch.zeros(1, 1, 64, 64, 64), seed=1)
        results[method] = [s["spearman_abs"] for s in steps]
        assert steps[0]["layer"] == "original" and steps[-1]["layer"].startswith("model.0.")  # the first block last
    saliency, edges = np.array(results["saliency"]), np.array(results[edge_detector])
    assert saliency[0] == pytest.approx(1.0) and saliency[-1] < 0.3  # well below 1 once every layer is random
    assert np.all(np.diff(saliency) < 0.15)  # non-increasing within a tolerance (measured: 1 → 0.17 at the first step, then 0.03–0.32, rises ≤ 0.13)
    assert np.all(edges > 0.999)  # the edge detector never notices
    after = bundle.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched


def test_esegeta_evaluate_writes_tables_ranking_and_figures(tmp_path):
    import csv
    import json

    from esegeta_monai.apps.cli import main

    demo = Path(__file__).resolve().parents[1] / "bundles" / "lesion_cls_2d_demo"
    out = tmp_path / "eval"
    code = main(["evaluate", "--bundle", str(demo), "--image", str(demo / "sample" / "lesion_0.png"),
                 "--label", str(demo / "sample" / "lesion_0_mask.png"), "--methods", "saliency,guided_backprop",
                 "--metrics", "infidelity,deletion,insertion,localisation,randomisation", "--samples", "4", "--steps", "8",
                 "--out", str(out), "-q"])
    assert code == 0
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert {(r["method"], r["metric"]) for r in rows} == {(m, k) for m in ("saliency", "guided_backprop")
                                                          for k in ("infidelity", "deletion", "insertion", "localisation", "randomisation")}
    assert all(r["status"] == "ok" for r in rows)
    infidelity_rows = [r for r in rows if r["metric"] == "infidelity"]
    assert all(r["n_samples"] == "4" and r["seed"] == "0" for r in infidelity_rows)  # recorded with each number
    localisation_ratio = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "localisation"}
    assert min(localisation_ratio.values()) > 3  # the trained classifier's maps sit on the lesion
    ranking = json.loads((out / "ranking.json").read_text())
    assert set(ranking) == {"infidelity", "deletion", "insertion", "localisation", "randomisation"}
    assert sorted(r["method"] for r in ranking["deletion"]) == ["guided_backprop", "saliency"]
    assert (out / "randomisation_lesion_0_saliency.png").is_file() and (out / "deletion_insertion.png").is_file()
    assert json.loads((out / "evaluation.json").read_text())["target_region"] == "fixed"  # the default, recorded
    assert {r["target_region"] for r in rows if r["metric"] == "randomisation"} == {"fixed"}
    assert main(["evaluate", "--bundle", str(demo), "--metrics", "localisation", "--out", str(tmp_path / "x"), "-q"]) == 2  # no label


def test_independent_randomisation_changes_one_layer_at_a_time():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.rand(1, 1, 12, 12)
    seen = []

    def explain(model):
        seen.append([name for (name, p), q in zip(model.named_parameters(), net.parameters()) if not torch.equal(p, q)])
        return Explainer(model, "saliency", "class:1")(x)

    steps = cascading_randomisation(net, explain, x, seed=2, independent=True)
    assert [s["layer"] for s in steps] == ["original", "4", "2", "0"]
    assert seen == [[], ["4.weight", "4.bias"], ["2.weight", "2.bias"], ["0.weight", "0.bias"]]  # one layer each time
    seen.clear()
    cascading_randomisation(net, explain, x, seed=2)
    assert [len(s) for s in seen] == [0, 2, 4, 6]  # cascading: the randomised layers accumulate


def test_esegeta_evaluate_takes_a_case_of_several_files(tmp_path):
    """`--image KEY=FILE` pairs form one case: its deletion AUC is the one computed directly on the
    two phases stacked as the bundle's preprocessing stacks them; one file alone is refused."""
    import csv

    import nibabel as nib
    from case_bundle import make_phases_bundle, write_phases

    from esegeta_monai.apps.cli import main
    from esegeta_monai.monai.bundle import load_bundle

    root = make_phases_bundle(tmp_path / "phases")
    arterial, venous = write_phases(tmp_path / "scans")
    out = tmp_path / "eval"
    common = ["--bundle", str(root), "--methods", "saliency", "--metrics", "deletion", "--steps", "4", "--no-figures", "-q"]
    assert main(["evaluate", *common, "--image", f"image={arterial}", "--image", f"venous={venous}", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader((out / "evaluation.csv").open()))
    assert row["status"] == "ok" and row["image"] == str(arterial)

    bundle = load_bundle(root)
    x = torch.as_tensor(np.stack([nib.load(str(p)).get_fdata() for p in (arterial, venous)]), dtype=torch.float32)
    x = ((x - x.min()) / (x.max() - x.min()))[None]  # ConcatItemsd, then ScaleIntensityd over both channels
    explainer = Explainer(bundle.network, "saliency", "argmax:1", **bundle.window.as_dict())
    direct = deletion_insertion(explainer, x, explainer(x), steps=4)["deletion_auc"]
    assert float(row["value"]) == pytest.approx(direct, rel=1e-4)
    swapped = tmp_path / "swapped"
    assert main(["evaluate", *common, "--image", f"image={venous}", "--image", f"venous={arterial}", "--out", str(swapped)]) == 0
    assert float(next(csv.DictReader((swapped / "evaluation.csv").open()))["value"]) != pytest.approx(direct, rel=1e-4)
    assert main(["evaluate", *common, "--image", str(arterial), "--out", str(tmp_path / "one")]) != 0


class OffsetLogit(torch.nn.Module):
    """A classifier whose class-1 logit is the image's sum inside ``box`` minus ``offset`` (class 0: 0):
    with a large offset the clean logit is negative, as the lesion demo's −3.73 on ``absent_2``."""

    def __init__(self, box, offset):
        super().__init__()
        self.box, self.offset = box, offset
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        inside = x[(slice(None), slice(None), *self.box)].flatten(1).sum(1) * self.scale - self.offset
        return torch.stack([torch.zeros_like(inside), inside], 1)


def test_deletion_normalises_by_the_filled_image_so_a_negative_target_keeps_its_direction():
    box = (slice(2, 8), slice(3, 9))
    net = OffsetLogit(box, 40.0)
    x, maps = _ideal_random_inverted(box)
    explainer = Explainer(net, "saliency", ClassScore(1))
    logit = float(net(x)[0, 1].detach())
    assert logit < -2  # the clean target is negative: T / T_clean would flip the curves
    for normalisation, clean, filled in (("score", logit, -40.0),
                                         ("auto", float(torch.softmax(net(x).detach().double(), 1)[0, 1]), float(torch.sigmoid(torch.tensor(-40.0).double())))):
        curves = {name: deletion_insertion(explainer, x, m, steps=4, normalisation=normalisation) for name, m in maps.items()}
        for c in curves.values():
            assert c["normalisation"] == ("score" if normalisation == "score" else "probability") and c["flag"] is None
            assert c["clean"] == pytest.approx(clean, rel=1e-5) and c["filled"] == pytest.approx(filled, rel=1e-5)
            np.testing.assert_allclose(c["deletion"], (np.array(c["deletion_raw"]) - c["filled"]) / (c["clean"] - c["filled"]))
            assert c["deletion"][0] == 1.0 and c["deletion"][-1] == 0.0 and c["insertion"][0] == 0.0 and c["insertion"][-1] == 1.0
            assert 0.0 <= c["deletion_auc"] <= 1.0 and 0.0 <= c["insertion_auc"] <= 1.0
        deletion = {name: c["deletion_auc"] for name, c in curves.items()}
        insertion = {name: c["insertion_auc"] for name, c in curves.items()}
        assert deletion["ideal"] < deletion["random"] < deletion["inverted"]
        assert insertion["ideal"] > insertion["random"] > insertion["inverted"]
        # the ideal map removes the whole box (36 of 256 pixels) in the first quarter: the filled image's target from then on
        assert curves["ideal"]["deletion_raw"][1] == pytest.approx(filled, rel=1e-5) and curves["ideal"]["deletion"][1] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(MethodError, match="classifier"):
        deletion_insertion(Explainer(torch.nn.Conv2d(1, 2, 1), "saliency", "argmax:1"), x, x, normalisation="probability")


def test_deletion_flags_an_image_whose_clean_and_filled_targets_are_equal():
    box = (slice(2, 8), slice(3, 9))
    x = torch.rand(1, 1, 16, 16) + 0.5
    x[(slice(None), slice(None), *box)] = 0.0  # the box holds the fill already: T_clean == T_fill
    explainer = Explainer(OffsetLogit(box, 3.0), "saliency", ClassScore(1))
    for normalisation in ("score", "auto"):
        curves = deletion_insertion(explainer, x, torch.rand_like(x), steps=4, normalisation=normalisation)
        assert curves["flag"] is not None and "undefined" in curves["flag"]
        assert np.isnan(curves["deletion_auc"]) and np.isnan(curves["insertion_auc"]) and np.isnan(curves["deletion"]).all()
        assert np.isfinite(curves["deletion_raw"]).all() and curves["clean"] == curves["filled"]

    from esegeta_monai.apps.evaluate import _ranking, _row
    from esegeta_monai.evaluation import METRICS, MetricCase, metric_options

    case = MetricCase(explainer, x, torch.rand_like(x))
    result = METRICS["deletion"].compute(case, metric_options("deletion", {"steps": 4}))
    assert result.value is None and result.status == "undefined" and "undefined" in result.error
    assert result.extra["normalisation"] == "probability" and result.curve["normalisation"] == "probability"
    (before,) = case.shared.values()
    METRICS["insertion"].compute(case, metric_options("insertion", {"steps": 4}))
    assert list(case.shared.values()) == [before]  # deletion and insertion share one pair of curves
    row = _row("a.png", "saliency", "deletion", result.value, error=result.error, status=result.status, **result.extra)
    assert row["status"] == "undefined" and _ranking([row]) == {}  # flagged, and left out of the ranking


def test_normalised_infidelity_is_scale_free_equals_captum_and_is_what_the_ranking_uses(classifier2d):
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    explainer = Explainer(classifier2d, "saliency", ClassScore(1), abs=False)
    attribution = explainer(x)
    values = [infidelity(explainer, x, attribution * scale, n_samples=6, noise_std=1.0, seed=3, normalize=True)
              for scale in (1.0, 7.5, -0.2)]
    assert values[0]["normalize"] is True and values[0]["infidelity"] > 1e-6
    assert all(v["infidelity"] == pytest.approx(values[0]["infidelity"], rel=1e-4) for v in values)
    raw = [infidelity(explainer, x, attribution * scale, n_samples=6, noise_std=1.0, seed=3)["infidelity"] for scale in (1.0, 7.5)]
    assert raw[1] > 2 * raw[0]  # the raw value depends on the map's scale
    torch.manual_seed(3)
    reference = captum_infidelity(lambda b: classifier2d(b)[:, 1], noise_perturbation(1.0), x, attribution,
                                  n_perturb_samples=6, max_examples_per_batch=4, normalize=True)
    assert values[0]["infidelity"] == pytest.approx(float(reference[0]), rel=1e-4)

    from esegeta_monai.apps.evaluate import _ranking, _row
    from esegeta_monai.evaluation import METRICS, MetricCase, metric_options

    result = METRICS["infidelity"].compute(MetricCase(explainer, x, attribution, seed=3), metric_options("infidelity", {"n_samples": 6}))
    direct = infidelity(explainer, x, attribution, n_samples=6, seed=3, normalize=True)["infidelity"]
    assert result.extra["normalize"] is True and result.value == pytest.approx(direct, rel=1e-6)
    assert _ranking([_row("a.png", "saliency", "infidelity", result.value, **result.extra)])["infidelity"][0]["normalize"] is True


def test_similarities_of_a_batch_are_the_per_image_values():
    from esegeta_monai.evaluation import similarities

    torch.manual_seed(0)
    a = torch.rand(2, 1, 8, 8, 8)
    b = a + torch.rand(2, 1, 8, 8, 8) * torch.tensor([0.2, 5.0]).view(2, 1, 1, 1, 1)  # image 1 barely alike
    batch = similarities(a, b, batch=True)
    for i in range(2):
        assert {k: v[i] for k, v in batch.items()} == similarities(a[i : i + 1], b[i : i + 1])
    assert batch["spearman"][0] > 0.9 > batch["spearman"][1]
    assert similarities(a, b)["spearman"] not in batch["spearman"]  # pooling would give another number

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.rand(2, 1, 10, 10)
    both = cascading_randomisation(net, lambda m: Explainer(m, "saliency", "class:1")(x), x[:1], seed=1)
    for i in range(2):
        one = cascading_randomisation(net, lambda m: Explainer(m, "saliency", "class:1")(x[i : i + 1]), x[:1], seed=1)
        assert [s["per_image"]["spearman_abs"][i] for s in both] == pytest.approx([s["spearman_abs"] for s in one], rel=1e-6)
    assert both[1]["spearman_abs"] == pytest.approx(np.mean(both[1]["per_image"]["spearman_abs"]))


def test_esegeta_evaluate_lists_metrics_with_family_direction_cost_and_reference(capsys):
    from esegeta_monai.apps.cli import main
    from esegeta_monai.evaluation import METRICS

    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--list-metrics"])  # no bundle needed
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(METRICS) + 1
    for metric in METRICS.values():
        line = next(line for line in lines if line.split()[0] == metric.name)
        assert line.split()[1:3] == [metric.family, metric.better or "-"]
        assert metric.cost in line and metric.reference in line
    with pytest.raises(SystemExit):
        main(["evaluate", "-v", "--list-metrics"])
    verbose = capsys.readouterr().out
    assert all(f"{k}={v!r}" in verbose for m in METRICS.values() for k, v in m.options.items())
    assert all(m.quantus in verbose for m in METRICS.values())


def test_metric_options_are_checked_and_recorded_in_every_row(tmp_path):
    from esegeta_monai.apps.evaluate import resolve_options
    from esegeta_monai.errors import ConfigError

    with pytest.raises(ConfigError, match="has no option noise; its options: n_samples=16"):
        resolve_options(["infidelity"], {"infidelity": {"noise": 0.2}})
    with pytest.raises(ConfigError, match="unknown or unasked"):
        resolve_options(["infidelity"], {"deletion": {"steps": 3}})
    resolved = resolve_options(["infidelity", "deletion", "sensitivity"], {"deletion": {"steps": 3}}, n_samples=5, steps=7)
    assert resolved["deletion"]["steps"] == 3 and resolved["infidelity"]["n_samples"] == resolved["sensitivity"]["n_samples"] == 5


def test_a_direction_that_flips_with_an_option_is_recorded_and_ranked_that_way():
    from esegeta_monai.apps.compare import summarise
    from esegeta_monai.apps.evaluate import _ranking, _row
    from esegeta_monai.evaluation import METRICS
    from esegeta_monai.evaluation.catalogue import lower_is_better

    metric = METRICS["region_perturbation"]
    assert metric.direction(metric_options("region_perturbation")) == "higher"
    assert metric.direction(metric_options("region_perturbation", {"order": "lerf"})) == "lower"
    rows = [_row(f"i{k}", method, "region_perturbation", value + k / 10, better="lower", order="lerf")
            for k in range(6) for method, value in (("a", 0.2), ("b", 0.6))]
    assert lower_is_better("region_perturbation", rows) is True and lower_is_better("region_perturbation") is False
    assert [entry["method"] for entry in _ranking(rows)["region_perturbation"]] == ["a", "b"]
    pair = summarise({"m1": rows, "m2": [{**r, "value": r["value"] + 1} for r in rows]}, n_boot=200)["pairs"][0]
    assert pair["lower_is_better"] is True and pair["better"] == "m1"


def test_every_catalogue_metric_runs_through_esegeta_evaluate_on_a_3d_segmentation_bundle(tmp_path):
    """The whole catalogue end to end on a 3D segmentation bundle with windows (resampled LPS input), a
    multi-label ground truth: every metric gives a row (ok, or undefined with its reason), records its
    options and direction, and the tables and figures are written."""
    import csv
    import json

    import nibabel as nib
    from tiny_bundle import SAMPLE_AFFINE, make_tiny_bundle

    from esegeta_monai.apps.cli import main
    from esegeta_monai.evaluation import METRICS

    bundle = make_tiny_bundle(tmp_path / "tiny")
    image = bundle / "sample" / "blob.nii.gz"
    shape = nib.load(str(image)).shape
    labels = np.zeros(shape, dtype=np.int16)
    labels[4:12, 6:18, 3:10] = 1
    labels[12:16, 6:18, 3:10] = 2  # two structures, for the per-label share
    nib.save(nib.Nifti1Image(labels, SAMPLE_AFFINE), str(tmp_path / "labels.nii.gz"))
    fast = {"region_perturbation.patch_size": 6, "region_perturbation.steps": 4, "irof.n_segments": 6,
            "faithfulness_correlation.subset_size": 2, "faithfulness_correlation.patch_size": 6, "top_k_intersection.k": 0.05, "road.percentages": "[10, 50, 90]"}
    out = tmp_path / "eval"
    code = main(["evaluate", "--bundle", str(bundle), "--label", str(tmp_path / "labels.nii.gz"), "--methods", "saliency",
                 "--metrics", ",".join(METRICS), "--samples", "2", "--steps", "3", "--out", str(out), "-q",
                 *[a for key, value in fast.items() for a in ("--metric-option", f"{key}={value}")]])
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert code == 0, [(r["metric"], r["error"]) for r in rows if r["status"] == "failed"]
    assert sorted(r["metric"] for r in rows) == sorted(METRICS)
    for row in rows:
        assert row["status"] == "ok" or (row["status"] == "undefined" and row["error"]), row
        assert row["better"] == (METRICS[row["metric"]].better or ""), row
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["region_perturbation"]["patch_size"] == "6" and by_metric["infidelity"]["n_samples"] == "2"
    assert by_metric["smooth_mprt"]["n_samples"] == "2" and by_metric["irof"]["n_segments"] == "6"
    options = json.loads((out / "evaluation.json").read_text())["options"]
    assert options["top_k_intersection"]["k"] == 0.05 and options["deletion"]["steps"] == 3
    shares = list(csv.DictReader((out / "label_shares.csv").open()))
    assert {r["label"] for r in shares} == {"0", "1", "2"}
    assert sum(float(r["voxel_share"]) for r in shares) == pytest.approx(1.0)
    ranking = json.loads((out / "ranking.json").read_text())
    assert "label_share" not in ranking  # descriptive: not ranked
    for figure in ("curves.png", "deletion_insertion.png", "randomisation_blob_saliency.png", "smooth_mprt_blob_saliency.png"):
        assert (out / figure).is_file(), figure
