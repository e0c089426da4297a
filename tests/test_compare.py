"""Comparing models on the same images (issue 14 item 4): the paired statistics against scipy and
hand computations, and `esegeta evaluate` with three bundles writing the model tables with intervals."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from scipy import stats

from esegeta_monai.apps.compare import summarise
from esegeta_monai.evaluation.statistics import (bootstrap_ci, holm, min_attainable_p, paired_comparison, rank_biserial,
                                                 standardised_mean_difference, wilcoxon_test)
from tiny_bundle import NETWORK_DEF, make_tiny_bundle, write_image


def test_wilcoxon_on_a_known_significant_and_a_known_null_case():
    significant = wilcoxon_test(np.arange(1.0, 11.0), np.zeros(10))  # every difference positive: R- = 0
    assert significant["test"] == "exact" and significant["statistic"] == 0.0
    assert significant["p"] == pytest.approx(2 / 2**10, rel=1e-12)  # P(all 10 signs +) + P(all -)
    null = wilcoxon_test([1.0, 0.0, 0.0, 4.0], [0.0, 2.0, 3.0, 0.0])  # differences 1, -2, -3, 4: R+ = R- = 5
    assert null["r_plus"] == null["r_minus"] == 5.0 and null["p"] == 1.0
    a, b = np.random.default_rng(3).normal(size=(2, 30))
    assert wilcoxon_test(a, b)["p"] == pytest.approx(stats.wilcoxon(a, b, method="exact").pvalue, rel=1e-12)
    nothing = wilcoxon_test([1.0, 2.0], [1.0, 2.0])
    assert nothing["p"] is None and nothing["test"].startswith("none")


def test_wilcoxon_with_ties_and_zeros_equals_the_enumerated_sign_flip_distribution():
    d = np.array([0.0, 1.0, 1.0, 2.0, 3.0, -1.5, 2.5, 4.0])  # a zero (dropped) and a tie
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    observed = ranks[nonzero > 0].sum()
    flips = np.array([ranks[np.array(s) > 0].sum() for s in itertools.product((1, -1), repeat=ranks.size)])
    expected = min(1.0, 2 * min(np.mean(flips <= observed + 1e-9), np.mean(flips >= observed - 1e-9)))
    result = wilcoxon_test(d, np.zeros_like(d))
    assert result["test"] == "permutation" and result["n_nonzero"] == 7
    assert result["p"] == pytest.approx(expected, rel=1e-9)
    large = np.r_[d, d + 10]  # 16 pairs with ties: the normal approximation
    assert wilcoxon_test(large, np.zeros_like(large))["test"] == "normal"
    assert min_attainable_p(3) == 0.25 and min_attainable_p(6) == pytest.approx(0.03125)


def test_effect_sizes_by_hand():
    assert rank_biserial([2, 3, 4, 0], [1, 1, 1, 4]) == pytest.approx(0.2)  # ranks of |1, 2, 3, -4|: (6 - 4) / 10
    assert rank_biserial([1, 2, 3], [0, 0, 0]) == 1.0 and rank_biserial([0, 0, 0], [1, 2, 3]) == -1.0
    assert np.isnan(rank_biserial([1.0], [1.0]))
    assert standardised_mean_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0]) == pytest.approx(2.0)  # mean 2, sd 1
    assert np.isnan(standardised_mean_difference([2.0, 3.0], [1.0, 2.0]))  # no spread


def test_holm_on_textbook_examples():
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])  # R's p.adjust
    # Holm 1979's step-down at alpha 0.05: 0.005 * 4 and 0.01 * 3 pass, 0.03 * 2 stops; the rest are kept
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]
    p = np.random.default_rng(0).random(12) ** 3
    adjusted = np.array(holm(p))
    assert np.all(adjusted >= p) and np.all(adjusted <= np.minimum(1, p * p.size) + 1e-12)  # between raw and Bonferroni
    assert np.all(np.diff(adjusted[np.argsort(p)]) >= 0)  # monotone in p


def _coverage(n, trials=300):
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(trials):
        a = rng.normal(1.0, 1.0, n)
        b = a - rng.normal(0.4, 0.8, n)  # true mean difference a - b: 0.4
        result = paired_comparison(a, b, n_boot=1000, seed=trial)
        covered += result["ci_low"] <= 0.4 <= result["ci_high"]
    return covered / trials


def test_bootstrap_interval_covers_the_true_mean_difference_at_about_the_nominal_rate():
    assert 0.89 <= _coverage(25) <= 0.98  # nominal 0.95; the percentile interval runs a little short at n = 25
    assert _coverage(3) < 0.85  # and much shorter with 3 images, as the comparison's statement warns
    assert bootstrap_ci([0.1, 0.5, 0.3], seed=4) == bootstrap_ci([0.1, 0.5, 0.3], seed=4)  # seeded


def test_paired_comparison_drops_non_finite_pairs_and_states_them():
    result = paired_comparison([1.0, 2.0, np.nan, 4.0], [0.5, 1.0, 1.0, np.inf])
    assert result["n"] == 2 and result["n_dropped"] == 2 and result["mean_difference"] == pytest.approx(0.75)


def _rows(metric, values, method="saliency"):
    return [{"image": f"img{k}", "method": method, "metric": metric, "value": v, "status": "ok"} for k, v in enumerate(values)]


def test_summarise_finds_a_real_difference_and_corrects_for_every_test():
    rng = np.random.default_rng(1)
    base = rng.random(10)
    noise = rng.normal(0, 0.01, 10)
    rows = {"a": _rows("deletion", base), "b": _rows("deletion", base + 0.2 + noise),  # b worse on every image
            "c": _rows("deletion", base + noise)}
    result = summarise(rows, n_boot=2000)
    pairs = {tuple(p["models"]): p for p in result["pairs"]}
    assert set(pairs) == {("a", "b"), ("a", "c"), ("b", "c")}
    ab = pairs[("a", "b")]
    assert ab["p"] == pytest.approx(2 / 2**10) and ab["p_holm"] == pytest.approx(3 * 2 / 2**10)  # smallest of m = 3
    assert ab["significant"] and ab["better"] == "a" and ab["rank_biserial"] == -1.0
    assert ab["ci_low"] <= -0.2 - noise.mean() <= ab["ci_high"] < 0
    assert not pairs[("a", "c")]["significant"]
    assert "after Holm's correction over all 3 tests" in result["statement"][0]
    assert any(s.startswith("deletion, saliency: a is better than b") for s in result["statement"])
    cell = next(c for c in result["cells"] if c["model"] == "b")
    assert cell["n"] == 10 and cell["mean"] == pytest.approx((base + 0.2 + noise).mean())
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"]


def test_summarise_with_three_images_says_no_test_can_be_significant():
    rows = {"a": _rows("insertion", [0.1, 0.2, 0.3]), "b": _rows("insertion", [0.5, 0.6, 0.7])}
    result = summarise(rows, n_boot=500)
    assert result["pairs"][0]["p"] == 0.25 and not result["pairs"][0]["significant"]
    assert result["pairs"][0]["better"] == "b"  # higher insertion is better
    assert "cannot reach significance" in " ".join(result["statement"])


@pytest.fixture(scope="module")
def three_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    first = make_tiny_bundle(root / "unet_seed0")
    bundles = [first]
    for seed in (1, 2):
        copy = root / f"unet_seed{seed}"
        shutil.copytree(first, copy)
        torch.manual_seed(seed)
        torch.save(UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"}).state_dict(), copy / "models" / "model.pt")
        bundles.append(copy)
    images = [write_image(root / f"case{k}.nii.gz", seed=k) for k in range(3)]
    return bundles, images


def test_evaluate_with_three_bundles_writes_the_model_tables_with_intervals(three_bundles, tmp_path):
    from esegeta_monai.apps.cli import main

    bundles, images = three_bundles
    out = tmp_path / "compare"
    argv = ["evaluate", *[a for b in bundles for a in ("--bundle", str(b))], *[a for i in images for a in ("--image", str(i))],
            "--methods", "saliency,guided_backprop", "--metrics", "deletion,insertion", "--steps", "4", "--target", "otsu:1",
            "--n-boot", "500", "--seed", "7", "--out", str(out), "-q"]
    assert main(argv) == 0
    result = json.loads((out / "comparison.json").read_text())
    models = ["unet_seed0", "unet_seed1", "unet_seed2"]
    assert [m["name"] for m in result["models"]] == models and len(result["images"]) == 3
    assert len(result["cells"]) == 2 * 2 * 3 and len(result["pairs"]) == 2 * 2 * 3  # metrics x methods x (models | pairs)
    for model in models:  # each model's own evaluation, and the cells are its per-image values
        rows = json.loads((out / model / "evaluation.json").read_text())["rows"]
        for cell in (c for c in result["cells"] if c["model"] == model):
            mine = [r["value"] for r in rows if r["metric"] == cell["metric"] and r["method"] == cell["method"]]
            assert cell["n"] == 3 and cell["mean"] == pytest.approx(np.mean(mine))
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    pair = next(p for p in result["pairs"] if p["metric"] == "deletion" and p["method"] == "saliency"
                and p["models"] == ["unet_seed0", "unet_seed2"])
    cells = {c["model"]: c for c in result["cells"] if c["metric"] == "deletion" and c["method"] == "saliency"}
    a, b = (list(cells[m]["values"].values()) for m in pair["models"])
    assert pair["p"] == wilcoxon_test(a, b)["p"] and pair["mean_difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert pair["min_attainable_p"] == 0.25 and not pair["significant"]  # three images cannot reach 0.05
    assert result["settings"]["sided"] == "two-sided" and result["settings"]["bootstrap_seed"] == 7
    assert result["settings"]["metric_seed"] == 7 and "m = 12" in result["settings"]["correction"]
    table = (out / "comparison.md").read_text()
    assert "| method | unet_seed0 | unet_seed1 | unet_seed2 |" in table and "95% bootstrap CI" in table
    assert "zero differences dropped" in table and "Holm" in table
    cell = cells["unet_seed1"]
    assert f"| saliency | {cells['unet_seed0']['mean']:.4g} [{cells['unet_seed0']['ci_low']:.4g}, " in table
    assert f"({cell['n']})" in table
    assert (out / "comparison.csv").read_text().count("\n") == 1 + 12 and (out / "cells.csv").is_file()
    assert (out / "comparison_deletion.png").is_file() and (out / "comparison_insertion.png").is_file()


def test_evaluate_with_one_bundle_writes_no_comparison(three_bundles, tmp_path):
    from esegeta_monai.apps.cli import main

    bundles, images = three_bundles
    out = tmp_path / "one"
    assert main(["evaluate", "--bundle", str(bundles[0]), "--image", str(images[0]), "--methods", "saliency",
                 "--metrics", "deletion", "--steps", "4", "--target", "otsu:1", "--no-figures", "--out", str(out), "-q"]) == 0
    assert (out / "evaluation.json").is_file() and not (out / "comparison.json").exists()
