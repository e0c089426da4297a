"""The training-seed machinery and the seed-aware statistics of ``benchmarks/paper_study.py``
(issue 14, item 5): seed copies and their resumption, the two-way bootstrap, the model comparisons
and their verdicts, the cost estimate. Fast: no training, no network."""

from __future__ import annotations

import doctest
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from esegeta_monai.evaluation.statistics import bootstrap_ci, holm, paired_comparison

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("paper_study", ROOT / "benchmarks" / "paper_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doctests(study):
    result = doctest.testmod(study, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_seed_config_sets_the_documented_seed_and_leaves_the_bundle_config(study):
    config = {"seed": 20240917, "training": {"iterations": 2500, "lr": 0.002}, "data": {"n_train": 32}}
    before = json.dumps(config)
    out = study.seed_config(config, 2, {"training": {"iterations": 6}})
    assert out["seed"] == 20240917 + 2000 and out["training"] == {"iterations": 6, "lr": 0.002} and out["data"] == {"n_train": 32}
    assert json.dumps(config) == before
    assert study.seed_config(config, 0)["seed"] == 20240917  # seed 0: the shipped training
    assert len({study.training_seed(5, k) + j for k in range(4) for j in range(3)}) == 12  # seed, seed+1, seed+2 never shared
    with pytest.raises(ValueError):
        study.training_seed(5, -1)


def test_the_three_bundles_name_their_training_module(study):
    for _, bundle in study.MODELS:
        assert study.training_module((ROOT / bundle / "configs" / "train.yaml").read_text()) == "training.train"


def _fake_bundle(root: Path) -> Path:
    bundle = root / "demo_bundle"
    for sub in ("configs", "docs", "models", "sample"):
        (bundle / sub).mkdir(parents=True)
    (bundle / "configs" / "train.yaml").write_text("# read by training.does_not_exist\nseed: 11\ntraining: {iterations: 3}\n")
    (bundle / "configs" / "inference.yaml").write_text("network_def: {}\n")
    (bundle / "models" / "model.pt").write_bytes(b"shipped weights")
    (bundle / "docs" / "training_metrics.json").write_text(json.dumps({"config": {"seed": 11, "training": {"iterations": 3}},
                                                                        "train_time_s": 60.0, "data_time_s": 1.5}))
    (bundle / "sample" / "image.nii.gz").write_bytes(b"sample")
    return bundle


def _finish_training(folder: Path, config: dict) -> None:
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "model.pt").write_bytes(b"seed weights")
    (folder / "docs" / "training_metrics.json").write_text(json.dumps({"config": config}))


def test_seed_copy_has_everything_but_the_weights_and_resumes(study, tmp_path):
    bundle = _fake_bundle(tmp_path)
    config = study.seed_config(yaml.safe_load((bundle / "configs" / "train.yaml").read_text()), 1)
    folder = study.seed_folder(tmp_path / "cache", bundle, 1)
    assert folder == tmp_path / "cache" / "models" / "demo_bundle_seed1"
    path = study.prepare_seed_copy(bundle, folder, config, "training.does_not_exist", 1)
    assert yaml.safe_load(path.read_text()) == config and config["seed"] == 1011
    assert (folder / "sample" / "image.nii.gz").read_bytes() == b"sample" and (folder / "configs" / "inference.yaml").is_file()
    assert not (folder / "models" / "model.pt").exists()
    assert not (folder / "docs" / "training_metrics.json").exists()  # the shipped metrics (seed 11) are not left to look trained
    assert not study.is_trained(folder, config)
    _finish_training(folder, config)
    assert study.is_trained(folder, config)
    assert not study.is_trained(folder, study.seed_config(config | {"seed": 11}, 2))  # another seed: retrain
    (folder / "models" / "model.pt").unlink()
    assert not study.is_trained(folder, config)  # killed before the weights were saved


def test_seed_bundles_keeps_trained_copies_and_trains_the_missing_ones(study, tmp_path):
    bundle = _fake_bundle(tmp_path)
    cache = tmp_path / "cache"
    base = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())
    for k in (1, 2):
        folder = study.seed_folder(cache, bundle, k)
        study.prepare_seed_copy(bundle, folder, study.seed_config(base, k), "training.does_not_exist", k)
        _finish_training(folder, study.seed_config(base, k))
    folders = study.seed_bundles([bundle], 3, cache, log=lambda m: None)  # nothing to train: the module is never run
    assert folders == [[bundle], [cache / "models" / "demo_bundle_seed1"], [cache / "models" / "demo_bundle_seed2"]]
    with pytest.raises(RuntimeError, match="does_not_exist"):  # seed 3 is missing: its training runs (and fails here)
        study.seed_bundles([bundle], 4, cache, log=lambda m: None)
    with pytest.raises(ValueError, match="--cache"):
        study.seed_bundles([bundle], 2, None, log=lambda m: None)
    assert study.training_seconds(bundle) == 61.5


def test_two_way_bootstrap_resamples_seeds_and_images(study):
    # two seeds, constant within each: the mean of a resample is a, (a + b) / 2 or b with chances 1/4, 1/2, 1/4
    assert study.two_way_bootstrap_ci([[1.0] * 5, [3.0] * 5]) == (1.0, 3.0)
    rng = np.random.default_rng(3)
    images = rng.normal(0.0, 1.0, size=12)
    no_seed_effect = np.tile(images, (3, 1))
    seed_effect = no_seed_effect + np.array([[-2.0], [0.0], [2.0]])
    low0, high0 = study.two_way_bootstrap_ci(no_seed_effect)
    low1, high1 = study.two_way_bootstrap_ci(seed_effect)
    assert low0 < images.mean() < high0 and low1 < images.mean() < high1
    assert high1 - low1 > 2 * (high0 - low0)
    assert (low0, high0) == pytest.approx(bootstrap_ci(images), abs=0.15)  # identical seeds: the images' interval
    with pytest.raises(ValueError):
        study.two_way_bootstrap_ci([1.0, 2.0])


def _rows(values: dict, method="saliency", key="sensitivity") -> list[dict]:
    """Rows of ``values[model][seed, image]``."""
    return [{"model": m, "method": method, "training_seed": s, "image": f"image {i:02d}", key: float(v[s, i])}
            for m, v in values.items() for s in range(v.shape[0]) for i in range(v.shape[1])]


def test_compare_models_verdicts_and_holm(study):
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, size=(3, 12))
    values = {"A": a,
              "B": a + rng.normal(0.0, 0.05, size=(3, 12)),  # no difference
              "C": a - 0.5 - rng.uniform(0.0, 0.1, size=(3, 12))}  # lower on every image of every seed
    rows = _rows(values)
    out = study.compare_models(rows, "sensitivity", ["A", "B", "C"], ["saliency"], n_boot=2000)
    by_pair = {(c["a"], c["b"]): c for c in out}
    assert by_pair[("A", "C")]["verdict"] == "beyond seed variation" and by_pair[("A", "C")]["significant_seeds"] == 3
    assert by_pair[("B", "C")]["verdict"] == "beyond seed variation"
    assert by_pair[("A", "B")]["verdict"] != "beyond seed variation"
    ac = by_pair[("A", "C")]
    per_seed_means = (values["A"] - values["C"]).mean(axis=1)
    assert ac["mean_difference"] == pytest.approx(per_seed_means.mean())
    assert ac["seed_sd"] == pytest.approx(np.std(per_seed_means, ddof=1))
    assert ac["ci_low"] < ac["mean_difference"] < ac["ci_high"]
    reference = paired_comparison(values["A"][1], values["C"][1], n_boot=2000)
    assert ac["per_seed"][1]["p"] == reference["p"] and ac["per_seed"][1]["ci_low"] == reference["ci_low"]
    ps = [c["p"] for r in out for c in r["per_seed"]]
    assert [c["p_holm"] for r in out for c in r["per_seed"]] == holm(ps)


def test_a_difference_that_flips_between_seeds_is_not_beyond_seed_variation(study):
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.1, size=(3, 12))
    b = a + np.array([[0.5], [-0.5], [0.5]]) + rng.uniform(0.0, 0.05, size=(3, 12))
    (c,) = study.compare_models(_rows({"A": a, "B": b}), "sensitivity", ["A", "B"], ["saliency"], n_boot=1000)
    assert c["significant_seeds"] == 3 and not c["same_sign"]
    assert c["verdict"] == "significant in 3 of 3 seeds; the sign differs between seeds"
    (one,) = study.compare_models(_rows({"A": a[:1], "B": b[:1]}), "sensitivity", ["A", "B"], ["saliency"], n_boot=1000)
    assert one["verdict"].startswith("significant (one training seed")  # one seed: no claim about seeds


def test_seed_table_cells(study):
    values = {"A": np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]), "B": np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    table = study.seed_table(_rows(values), "sensitivity", ["A", "B"], ["saliency"], n_boot=500)
    cell = table["saliency"]["A"]
    assert cell["mean"] == 3.0 and cell["per_seed"] == [2.0, 4.0] and cell["seed_sd"] == pytest.approx(np.sqrt(2.0))
    assert (cell["n_seeds"], cell["n_images"]) == (2, 3)
    assert table["saliency"]["B"]["ci_low"] == table["saliency"]["B"]["ci_high"] == 0.0
    rows = _rows(values)[:-1]  # one (seed, image) missing
    with pytest.raises(ValueError, match="no sensitivity"):
        study.seed_table(rows, "sensitivity", ["A", "B"], ["saliency"])


def test_cost_estimate_of_the_full_study(study):
    seconds = [study.training_seconds(ROOT / bundle) for _, bundle in study.MODELS]
    assert all(s > 0 for s in seconds)
    one = study.cost_estimate(seconds, n_seeds=3, n_images=12, randomisation_seeds=3, jobs=1)
    two = study.cost_estimate(seconds, n_seeds=3, n_images=12, randomisation_seeds=3, jobs=2)
    assert one["training"] == pytest.approx(2 * sum(seconds) / 60, abs=0.1)
    assert two["training"] == pytest.approx(sum(seconds) / 60, abs=0.1)  # 6 trainings on 2 workers: balanced
    assert one["metrics"] == pytest.approx(3 * 3 * 12 * study.EVAL_SECONDS_PER_MODEL_IMAGE / 60, abs=0.1)


def test_cached_results_keep_the_seconds_they_cost(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "COMPUTE_SECONDS", study.defaultdict(float))
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert study.cached(tmp_path, "k", compute, part="metrics") == {"value": 1}
    first = study.COMPUTE_SECONDS["metrics"]
    assert study.cached(tmp_path, "k", compute, part="metrics") == {"value": 1} and len(calls) == 1
    assert study.COMPUTE_SECONDS["metrics"] == pytest.approx(2 * first)  # a reused part counts what it cost
    study.torch.save({"value": "bare"}, tmp_path / "old.pt")  # a result stored before the timing: recomputed once
    assert study.cached(tmp_path, "old", compute, part="metrics") == {"value": 2}
    assert study.cached(tmp_path, "old", compute, part="metrics") == {"value": 2} and len(calls) == 2
