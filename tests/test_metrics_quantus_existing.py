"""The six metrics that came before the catalogue (infidelity, sensitivity, deletion, insertion,
localisation, randomisation): parity with Quantus 0.6.0 in 2D with the settings aligned (written per
test: the same draws replayed into Quantus, its defaults changed where they differ), and the windowed
values against MONAI's full sliding-window inference of every perturbed image (3D UNet, 16³ windows at
overlap 0.5, Gaussian blending)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max
from captum.metrics._core.sensitivity import default_perturb_func
from monai.inferers import sliding_window_inference
from quantus_helpers import require_quantus
from window_reference import naive_target

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion
from esegeta_monai.evaluation import METRICS, MetricCase, deletion_insertion, infidelity, localisation, sensitivity
from esegeta_monai.evaluation import robustness
from esegeta_monai.evaluation.randomisation import explainer_randomisation, parameterised_layers

WINDOWS = {"roi_size": (16, 16, 16), "overlap": 0.5, "mode": "gaussian"}
QUIET = {"disable_warnings": True, "display_progressbar": False}
NOISE = robustness.noise_perturbation  # the module's own, before any test wraps it


def images(n, seed):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def recorded_noise(monkeypatch):
    """Our infidelity's Gaussian noise draws, recorded as Captum makes them (one array per draw)."""
    draws = []

    def recording(noise_std, roi=None):
        perturb = NOISE(noise_std, roi)

        def wrapped(inputs):
            noise, perturbed = perturb(inputs)
            draws.extend(noise.detach().numpy().copy())
            return noise, perturbed

        return wrapped

    monkeypatch.setattr(robustness, "noise_perturbation", recording)
    return draws


def replay(values):
    """Quantus's ``perturb_func(arr (B, F), indices, **baseline kwargs)``, returning ``values[k]`` at its k-th call."""
    calls = []

    def perturb_func(arr, indices, **kwargs):  # noqa: ARG001 (every index is perturbed: the whole image)
        calls.append(indices)
        return np.asarray(values[len(calls) - 1], np.float32).reshape(arr.shape)

    return perturb_func, calls


# -- Quantus parity (2D) ---------------------------------------------------------------------------------------
def test_infidelity_equals_quantus_infidelity_with_our_noise(classifier2d, monkeypatch):
    """Quantus's Infidelity averages over n_perturb_samples the mean over its patches of
    (y(x) − y(x̃) − Σ a·(x − x̃))², x̃ cumulative patches set to the image minimum ('black'). Alignment:
    perturb_patch_sizes=[16] (one patch: the whole 16×16 image, so one perturbed image per sample) and a
    perturb_func returning x − I for our k-th Gaussian draw I (Captum's x − I), n_perturb_samples = our
    n_samples, loss "mse", abs=False, normalise=False (its defaults), softmax=False (the class logit, our
    T of a class: target). Then Quantus's value is Captum's unnormalised infidelity; our normalize=True
    is Quantus's with the map scaled by Captum's β = Σ(a·I)(Δy) / Σ(a·I)²."""
    quantus = require_quantus()
    x, n, std = images(2, 0), 5, 0.3
    for i in range(2):
        explainer = Explainer(classifier2d, "saliency", "class:1", abs=False)
        xi = x[i : i + 1]
        a = explainer(xi)
        draws = recorded_noise(monkeypatch)
        ours = infidelity(explainer, xi, a, n_samples=n, noise_std=std, per_eval=2, seed=7 + i)
        normalised = infidelity(explainer, xi, a, n_samples=n, noise_std=std, per_eval=2, seed=7 + i, normalize=True)
        noise = np.stack(draws[:n])
        assert len(draws) == 2 * n and np.array_equal(noise, np.stack(draws[n:]))  # the seed fixes the draws
        perturb_func, calls = replay(xi.numpy() - noise)

        def quantus_infidelity(attribution):
            calls.clear()
            metric = quantus.Infidelity(perturb_patch_sizes=[16], n_perturb_samples=n, perturb_func=perturb_func,
                                        abs=False, normalise=False, **QUIET)
            value = metric(model=classifier2d, x_batch=xi.numpy(), y_batch=np.ones(1, int), a_batch=attribution,
                           device="cpu", softmax=False)
            assert len(calls) == n and calls[0].shape == (1, 256)  # one whole-image perturbation per sample
            return float(value[0])

        assert ours["infidelity"] == pytest.approx(quantus_infidelity(a.numpy()), rel=1e-5)
        with torch.no_grad():  # Captum's β from the same draws: Δy = y(x) − y(x − I), a·I
            dy = (classifier2d(xi)[:, 1] - classifier2d(xi - torch.from_numpy(noise))[:, 1]).double().numpy()
        ai = (a.double().numpy() * noise).reshape(n, -1).sum(1)
        beta = (ai * dy).sum() / (ai**2).sum()
        assert normalised["infidelity"] == pytest.approx(quantus_infidelity(beta * a.numpy()), rel=1e-5)


def test_infidelity_definition_coincides_with_quantus_default_perturbation(classifier2d, monkeypatch):
    """What coincides with Quantus's default (cumulative 4×4 patches set to the image minimum): our
    infidelity computed with those perturbations as its draws (the 16 cumulative images of one sample,
    n_samples=16) equals Quantus's default Infidelity — the loss, Δy and Σ a·Δx are the same; only the
    perturbation distribution (Gaussian noise in ours, as Captum) differs."""
    quantus = require_quantus()
    explainer = Explainer(classifier2d, "saliency", "class:2", abs=False)
    x = images(1, 1)
    a = explainer(x)
    black, perturbed = float(x.min()), x.clone()
    patched = []
    for row in range(4):
        for column in range(4):  # Quantus's block order (row-major over the 4×4 grid of 4×4 patches)
            perturbed[..., 4 * row : 4 * row + 4, 4 * column : 4 * column + 4] = black
            patched.append(perturbed.clone())
    patched = torch.cat(patched)
    handed = []

    def cumulative_patches(noise_std, roi=None):  # noqa: ARG001 (I = x − x̃ of the next patched images)
        def perturb(inputs):
            rows = patched[len(handed) : len(handed) + len(inputs)]
            handed.extend(range(len(inputs)))
            return inputs - rows, rows

        return perturb

    monkeypatch.setattr(robustness, "noise_perturbation", cumulative_patches)
    ours = infidelity(explainer, x, a, n_samples=16, per_eval=4)["infidelity"]
    theirs = quantus.Infidelity(**QUIET)(model=classifier2d, x_batch=x.numpy(), y_batch=np.array([2]), a_batch=a.numpy(),
                                          device="cpu")  # its defaults: patch 4, 'black', 10 samples (deterministic here)
    assert len(handed) == 16 and ours == pytest.approx(float(theirs[0]), rel=1e-5)


def test_sensitivity_equals_quantus_max_sensitivity_with_our_draws(classifier2d, monkeypatch):
    """Quantus's MaxSensitivity: max over draws of ‖Φ(x) − Φ(x̃)‖_F / ‖Φ(x)‖_F (difference, fro_norm
    and fro_norm, its defaults) — Captum's sensitivity_max with its L2 norm. Alignment: its perturb_func
    replays our draws (Captum's uniform δ in [−radius, radius] from the seeded torch generator; its
    default is uniform in [−0.2, 0.2] from numpy), nr_samples = our n_samples (its default 200),
    explain_func = our explainer and a_batch = our map of x (the same Φ), abs=False, normalise=False
    (its defaults), return_nan_when_prediction_changes=False (its default: every draw counts, as ours)."""
    quantus = require_quantus()
    x, n, radius = images(2, 2), 4, 0.05
    explainer = Explainer(classifier2d, "saliency", "class:0", abs=False)
    for i in range(2):
        xi = x[i : i + 1]
        draws = []

        def recording(inputs, perturb_radius):
            perturbed = default_perturb_func(inputs, perturb_radius)
            draws.extend(perturbed[0].numpy().copy())
            return perturbed

        monkeypatch.setattr(robustness, "default_perturb_func", recording)
        ours = sensitivity(explainer, xi, n_samples=n, radius=radius, seed=3 + i)["sensitivity"]
        assert len(draws) == n and np.abs(np.stack(draws) - xi.numpy()).max() <= radius
        perturb_func, calls = replay(draws)
        theirs = quantus.MaxSensitivity(nr_samples=n, perturb_func=perturb_func, abs=False, normalise=False, **QUIET)(
            model=classifier2d, x_batch=xi.numpy(), y_batch=np.zeros(1, int), a_batch=explainer(xi).numpy(), device="cpu",
            explain_func=lambda model, inputs, targets, **kw: explainer(torch.from_numpy(np.asarray(inputs, np.float32))).numpy())
        assert len(calls) == n and ours == pytest.approx(float(theirs[0]), rel=1e-5)


def test_deletion_and_insertion_raw_curves_equal_quantus_pixel_flipping(classifier2d):
    """Quantus's PixelFlipping: the curve of y after each step of features_in_step voxels set to the
    baseline, in decreasing order of the map. Alignment: features_in_step = 256 / steps (32: our counts
    round(k/steps · 256) are the same), perturb_baseline=0.0 (our fill; its default 'black' is the image
    minimum), abs=False and normalise=False (its default normalise divides by the maximum: the order is
    unchanged), softmax=True (its probability = our normalisation="probability"). Its curve is our
    deletion_raw without the clean image's point. A map without ties (both sorts are unstable: with ties at a
    step's boundary the two would remove different voxels — a saliency map of this max-pool network is 0 at
    3/4 of the pixels). Insertion, which Quantus lacks, is PixelFlipping started from the filled image with
    a perturb_func that puts the clean voxels back."""
    quantus = require_quantus()
    x, steps = images(2, 3), 8
    maps = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        explainer = Explainer(classifier2d, "saliency", "class:1")
        xi, ai = x[i : i + 1], maps[i : i + 1]
        ours = deletion_insertion(explainer, xi, ai, steps=steps, fill=0.0, normalisation="probability")
        common = dict(model=classifier2d, y_batch=np.ones(1, int), a_batch=ai.numpy(), device="cpu", softmax=True)
        flipping = quantus.PixelFlipping(features_in_step=256 // steps, perturb_baseline=0.0, abs=False, normalise=False, **QUIET)
        deletion = flipping(x_batch=xi.numpy(), **common)[0]
        np.testing.assert_allclose(deletion, ours["deletion_raw"][1:], rtol=1e-5, atol=1e-7)
        clean = xi.numpy().reshape(1, -1)

        def put_back(arr, indices, **kwargs):  # noqa: ARG001 (the clean image's values, not a baseline)
            out = arr.copy()
            out[np.arange(len(arr))[:, None], indices] = clean[np.arange(len(arr))[:, None], indices]
            return out

        inserting = quantus.PixelFlipping(features_in_step=256 // steps, perturb_func=put_back, abs=False, normalise=False, **QUIET)
        insertion = inserting(x_batch=np.zeros_like(xi.numpy()), **common)[0]
        np.testing.assert_allclose(insertion, ours["insertion_raw"][1:], rtol=1e-5, atol=1e-7)
        assert ours["deletion"][0] == 1.0 and ours["insertion"][-1] == 1.0


def test_localisation_share_and_pointing_equal_quantus(classifier2d):
    """AttributionLocalisation (weighted=False, positive_attributions=True, abs=False, normalise=False;
    its defaults abs=True, normalise=True would rank |a|) is the positive map's share inside the label =
    our share_inside (dilation=0), up to its 1e-9 in the denominator. Its weighted=True is not our ratio:
    Quantus 0.6.0 multiplies the share by size_bbox / x_batch[2:].size — the label's size over the size of
    the batch from its third image on (a slice of the batch axis), i.e. share · label_share for a batch of 3
    one-channel images and ∞ for a batch of 1 — where ours (Kohlbrenner et al. 2020) divides by the label's
    share. PointingGame (abs=False, normalise=False, weighted=False) = our pointing: whether the maximum
    of the signed map is inside (without ties at the maximum: Quantus counts a hit when any maximum is)."""
    quantus = require_quantus()
    x = images(3, 5)
    explainer = Explainer(classifier2d, "saliency", "class:1", abs=False)
    a = explainer(x)
    masks = np.zeros((3, 1, 16, 16))
    masks[0, 0, 2:8, 3:9], masks[1, 0, 8:16, 0:16], masks[2, 0, 5:11, 5:11] = 1, 1, 1
    top = [np.unravel_index(int(np.argmax(a[i, 0].numpy())), (16, 16)) for i in range(3)]
    masks[2, 0, top[2][0], top[2][1]] = 1  # image 2's maximum inside its label (one hit at least)
    ours = [localisation(a[i], masks[i, 0], dilation=0) for i in range(3)]
    common = dict(model=classifier2d, x_batch=x.numpy(), y_batch=np.ones(3, int), a_batch=a.numpy(), s_batch=masks, device="cpu")
    share = quantus.AttributionLocalisation(positive_attributions=True, abs=False, normalise=False, **QUIET)(**common)
    assert share == pytest.approx([o["share_inside"] for o in ours], rel=1e-6)  # Quantus sums in float32
    weighted = quantus.AttributionLocalisation(weighted=True, positive_attributions=True, abs=False, normalise=False, **QUIET)(**common)
    assert weighted == pytest.approx([o["share_inside"] * o["label_share"] for o in ours], rel=1e-6)
    assert [o["ratio"] for o in ours] == pytest.approx([o["share_inside"] / o["label_share"] for o in ours])
    pointing = quantus.PointingGame(abs=False, normalise=False, **QUIET)(**common)
    assert [bool(p) for p in pointing] == [o["pointing"] for o in ours] and ours[2]["pointing"]
    result = METRICS["localisation"].compute(MetricCase(explainer, x[:1], a[:1], label=masks[0, 0].astype(int)), {"dilation": 0})
    assert result.value == pytest.approx(ours[0]["ratio"]) and result.extra["pointing"] == ours[0]["pointing"]


def test_randomisation_equals_quantus_mprt_last_correlation(classifier2d, monkeypatch):
    """Quantus's MPRT (layer_order="top_down", spearman of the flattened maps, abs=True: |maps|,
    return_last_correlation=True: the correlation after the last layer) = our randomisation value (Spearman
    of |maps| after the cascade). Alignment: normalise=False (its default normalise_by_max rescales each map:
    ranks unchanged), explain_func = our explainer (saliency, signed: Quantus takes abs), a_batch = our
    trained map, and its layer generator yields our models. Its own generator walks the same layers in the
    same order here (registration order reversed = forward order reversed for this Sequential) but resets
    every layer under torch.manual_seed(seed + 1), ours layer i under seed + i: the models differ unless
    replaced."""
    quantus = require_quantus()
    from quantus.helpers.model.pytorch_model import PyTorchModel

    x, our_seed = images(2, 6), 3
    y = classifier2d(x).argmax(1).numpy()
    layers = list(reversed(parameterised_layers(classifier2d, x[:1])))
    theirs_order = [name for name, _ in PyTorchModel(classifier2d, channel_first=True).get_random_layer_generator(seed=our_seed)]
    assert theirs_order == layers == ["7", "3", "0"]
    explainers = [Explainer(classifier2d, "saliency", f"class:{y[i]}", abs=False) for i in range(2)]
    ours = [explainer_randomisation(explainers[i], x[i : i + 1], seed=our_seed) for i in range(2)]
    values = [METRICS["randomisation"].compute(MetricCase(explainers[i], x[i : i + 1], ours[i][0]["map"], seed=our_seed),
                                               {"target_region": "fixed"}).value for i in range(2)]
    assert values == [o[-1]["spearman_abs"] for o in ours]

    def our_models(self, order="top_down", seed=42):  # noqa: ARG001 (ours: layer i under our_seed + i, not its seed + 1)
        model = copy.deepcopy(self.model)
        modules = dict(model.named_modules())
        for index, name in enumerate(layers, start=1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(our_seed + index)
                modules[name].reset_parameters()
            yield name, model

    monkeypatch.setattr(PyTorchModel, "get_random_layer_generator", our_models)

    def explain(model, inputs, targets, **kwargs):
        return torch.cat([Explainer(model, "saliency", f"class:{int(t)}", abs=False)(torch.as_tensor(np.asarray(i)[None], dtype=torch.float32))
                          for i, t in zip(inputs, targets)]).numpy()

    a_batch = torch.cat([o[0]["map"] for o in ours]).numpy()
    mprt = quantus.MPRT(normalise=False, **QUIET)
    every = mprt(model=classifier2d, x_batch=x.numpy(), y_batch=y, a_batch=a_batch, explain_func=explain, device="cpu")
    assert list(every) == ["original", *layers]
    for step, scores in enumerate(every.values()):  # every layer's correlation, image by image
        assert scores == pytest.approx([o[step]["spearman_abs"] for o in ours], abs=1e-9)
    last = quantus.MPRT(normalise=False, return_last_correlation=True, **QUIET)(
        model=classifier2d, x_batch=x.numpy(), y_batch=y, a_batch=a_batch, explain_func=explain, device="cpu")
    assert last == pytest.approx(values, abs=1e-9)


# -- windowed == naive full sliding-window forward (3D) --------------------------------------------------------
def test_infidelity_through_windows_equals_captum_with_full_sliding_window_forward(unet3d, volume, monkeypatch):
    """The same seed gives the same Gaussian draws: Captum's infidelity with naive_target (every perturbed
    image through MONAI's full sliding_window_inference, the argmax region fixed from x) as its forward
    equals ours — on the whole image (every window re-run) and with the noise in a corner box (only the
    windows it touches re-run), unnormalised and normalised.

    Tolerances: each T (a sum over the region, ≈ 2.6·10³ here) agrees to float32 rounding (rtol 1e-6).
    Infidelity squares Δy = T(x) − T(x − I), a difference of two such sums (≈ 4 for noise everywhere,
    ≈ 0.05 in the corner box): one float32 ulp of T (2.4·10⁻⁴) is 10⁻⁴–10⁻² of Δy. With δ the largest
    difference of a Δy between the two computations (twice the largest difference of a T), the values can
    differ by at most 2·√value·δ + δ² (|mean((e + d)²) − mean(e²)| with |d| ≤ δ) — that bound is asserted.
    """
    x = volume[:1]
    explainer = Explainer(unet3d, "saliency", "argmax:1", abs=False, **WINDOWS)
    a = explainer(x)
    naive = naive_target(unet3d, ArgmaxRegion(1), x, **WINDOWS)
    seen, reference_seen = [], []

    def forward(images):  # the naive T of each row, kept with the row
        reference_seen.append((images.clone(), naive(images).detach().clone()))
        return reference_seen[-1][1]

    class Recording(robustness.WindowedTarget):  # our T of each perturbed image, kept with the image
        def __call__(self, images):
            values = super().__call__(images)
            seen.append((images.clone(), values.detach().clone()))
            return values

    monkeypatch.setattr(robustness, "WindowedTarget", Recording)
    for roi, normalize in ((None, False), (None, True), ([(0, 6), (0, 6), (0, 6)], False)):
        seen.clear(), reference_seen.clear()
        ours = infidelity(explainer, x, a, n_samples=4, noise_std=0.05, roi=roi, per_eval=2, seed=5, normalize=normalize)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            reference = captum_infidelity(forward, NOISE(0.05, roi), x, a, n_perturb_samples=4, max_examples_per_batch=2,
                                          normalize=normalize)
        images, values = (torch.cat(parts) for parts in zip(*seen))
        reference_images, reference_values = (torch.cat(parts) for parts in zip(*reference_seen))
        assert len(images) == 4 + 2 and torch.equal(images, reference_images)  # the same draws (and x once per batch)
        if roi is not None:  # the noise only inside the box
            assert torch.equal(images[..., 6:, :, :], x.expand(6, -1, -1, -1, -1)[..., 6:, :, :])
        torch.testing.assert_close(values.double(), reference_values.double(), rtol=1e-6, atol=0)
        delta = 2 * float((values.double() - reference_values.double()).abs().max())
        value = float(reference[0])
        assert abs(ours["infidelity"] - value) <= 2 * value**0.5 * delta + delta**2, (roi, normalize, ours["infidelity"], value)


def test_deletion_insertion_through_windows_equal_a_naive_loop(unet3d, volume):
    """Our raw curves against a numpy loop building the same images (voxels in decreasing order of the
    map, round(k/steps · N) of them replaced by fill, or put back into the filled image) and taking T of
    each through the full sliding-window inference. The map falls off from a corner, so the first steps
    change only the windows there; its jitter breaks ties (any order of tied voxels would be valid)."""
    x, steps, fill = volume[:1], 4, 0.0
    explainer = Explainer(unet3d, "saliency", "argmax:1", **WINDOWS)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in x.shape[2:]], indexing="ij"))
    attribution = -grid.pow(2).sum(0).sqrt()[None, None] + 1e-3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    ours = deletion_insertion(explainer, x, attribution, steps=steps, fill=fill, per_eval=3)
    forward = naive_target(unet3d, ArgmaxRegion(1), x, **WINDOWS)
    order = np.argsort(-attribution.numpy().ravel(), kind="stable")
    flat, deleted, inserted = x.numpy().ravel(), [], []
    for fraction in np.linspace(0.0, 1.0, steps + 1):
        removed = np.zeros(flat.size, bool)
        removed[order[: int(round(fraction * flat.size))]] = True
        deleted.append(np.where(removed, fill, flat).reshape(x.shape))
        inserted.append(np.where(removed, flat, fill).reshape(x.shape))
    expected = {name: forward(torch.from_numpy(np.concatenate(batch)).float()).double().numpy()
                for name, batch in (("deletion", deleted), ("insertion", inserted))}
    assert ours["normalisation"] == "score" and ours["flag"] is None
    for name in ("deletion", "insertion"):
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(ours[f"{name}_raw"], expected[name], rtol=1e-6, atol=1e-7 * scale, err_msg=name)
    assert ours["clean"] == ours["deletion_raw"][0] and ours["filled"] == ours["deletion_raw"][-1]


def test_sensitivity_through_windows_equals_captum_with_autograd_through_sliding_window_inference(unet3d, volume):
    """Captum's sensitivity_max with the same seed (same draws) and explanations by autograd through
    MONAI's sliding_window_inference (the argmax region of each perturbed image's own prediction, as our
    explainer recomputes it) equals ours."""
    x = volume[:1, :, :24, :20, :24]
    explainer = Explainer(unet3d, "saliency", "argmax:1", abs=False, **WINDOWS)

    def autograd(inputs):  # Captum calls it under no_grad
        leaf = (inputs[0] if isinstance(inputs, tuple) else inputs).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            output = sliding_window_inference(leaf, WINDOWS["roi_size"], 1, unet3d, overlap=WINDOWS["overlap"], mode=WINDOWS["mode"])
            return (torch.autograd.grad((output * ArgmaxRegion(1).weights(output)).sum(), leaf)[0],)

    ours = sensitivity(explainer, x, n_samples=3, radius=0.05, seed=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        reference = sensitivity_max(autograd, x, perturb_func=default_perturb_func, perturb_radius=0.05, n_perturb_samples=3,
                                    max_examples_per_batch=1)
    assert ours["sensitivity"] == pytest.approx(float(reference[0]), rel=1e-4)
