"""Average sensitivity, relative input and relative output stability: the definitions against a
naive computation over the same draws, Captum's sensitivity_max as the max of avg_sensitivity's
draws, the windowed values against MONAI's full sliding-window inference with autograd, and
parity with Quantus 0.6.0 in 2D."""

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ArgmaxRegion
from esegeta_monai.evaluation import METRICS, MetricCase, sensitivity
from esegeta_monai.evaluation.stability import (StabilityDraws, avg_sensitivity, relative_input_stability,
                                                relative_output_stability, uniform_draws)
from quantus_helpers import require_quantus

EPS = 1e-6
STABILITY = ("avg_sensitivity", "relative_input_stability", "relative_output_stability")


def _near_tie(net, x):
    """``net`` with class 1's bias moved just below class 2's logit on ``x``: small draws flip some predictions."""
    with torch.no_grad():
        logits = net(x)[0]
        net[-1].bias[1] += logits[2] - logits[1] - 1e-4
    return net


def _naive(x, n_samples, radius, seed, explain, output, eps=EPS, clean_map=None):
    """Per draw, in numpy: the avg-sensitivity ratio, the relative map change, the RIS and ROS ratios,
    whether the class changed and the map — draws made here, by the rule Captum's default_perturb_func
    follows; ``clean_map``: Φ(x) (default ``explain(x)``)."""
    generator = torch.Generator().manual_seed(seed)
    e = explain(x) if clean_map is None else clean_map
    h, xn = output(x), x.double().numpy()
    rows = []
    for _ in range(n_samples):
        xp = x + torch.empty(x.shape).uniform_(-radius, radius, generator=generator)
        ep, hp = explain(xp), output(xp)
        relative_map = np.linalg.norm(((e - ep) / np.where(e == 0, eps, e)).ravel())
        relative_input = np.linalg.norm(((xn - xp.double().numpy()) / np.where(xn == 0, eps, xn)).ravel())
        changed = h.ndim == 2 and h.argmax(1)[0] != hp.argmax(1)[0]
        output_change = np.linalg.norm((h - hp).ravel())
        rows.append((np.linalg.norm((ep - e).ravel()) / np.linalg.norm(e.ravel()), relative_map,
                     relative_map / relative_input, relative_map / output_change, changed, relative_input, output_change, ep))
    return [np.array(column) for column in zip(*rows)]


def test_definitions_equal_a_naive_computation_over_the_same_draws(classifier2d):
    torch.manual_seed(2)
    x = torch.rand(1, 1, 16, 16)
    x[..., :2, :] = 0  # zero voxels: the ε rule of the input's element-wise division
    net = _near_tie(classifier2d, x)
    explainer = Explainer(net, "saliency", "class:1", abs=False)

    def explain(image):  # saliency of the class-1 logit by autograd, independent of the engine
        image = image.clone().requires_grad_(True)
        return torch.autograd.grad(net(image)[0, 1], image)[0].double().numpy()

    def output(image):
        with torch.no_grad():
            return net(image).double().numpy()

    n, radius = 6, 0.05
    clean = explainer(x)
    clean[..., 5, :4] = 0  # zeros in Φ(x), which the metrics take as given: the ε rule of the map's division
    avg, relative_map, ris, ros, changed = _naive(x, n, radius, 3, explain, output, clean_map=clean.double().numpy())[:5]
    assert 0 < changed.sum() < n  # some draws change the class, not all
    draws = StabilityDraws(explainer, x, clean, n, radius, seed=3)
    got = avg_sensitivity(explainer, x, None, draws=draws)
    assert got["avg_sensitivity"] == pytest.approx(avg.mean(), rel=1e-5)
    assert got["max"] == pytest.approx(avg.max(), rel=1e-5) and got["std"] == pytest.approx(avg.std(), rel=1e-4)
    for function, naive in ((relative_input_stability, ris), (relative_output_stability, ros)):
        dropped, kept = function(explainer, x, None, draws=draws), function(explainer, x, None, drop_changed=False, draws=draws)
        assert dropped["n_used"] == n - changed.sum() and kept["n_used"] == n
        assert dropped[function.__name__] == pytest.approx(naive[~changed].max(), rel=1e-5)
        assert kept[function.__name__] == pytest.approx(naive.max(), rel=1e-5)
        np.testing.assert_allclose(dropped["ratios"], naive, rtol=1e-5)
        np.testing.assert_array_equal(dropped["changed"], changed)
    shares = relative_input_stability(explainer, x, None, draws=draws)
    assert (shares["input_zero_share"], shares["map_zero_share"]) == (2 / 16, 4 / 256)


def test_avg_sensitivity_and_sensitivity_are_mean_and_max_of_the_same_draws():
    torch.manual_seed(0)
    explainer = Explainer(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 3, padding=1)),
                          "saliency", "argmax:1", abs=False)
    x = torch.rand(1, 1, 20, 20)
    state = torch.random.get_rng_state()
    got = avg_sensitivity(explainer, x, explainer(x), n_samples=5, radius=0.05, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the draws leave the global generator alone
    captum = sensitivity(explainer, x, n_samples=5, radius=0.05, seed=4)["sensitivity"]  # Captum's sensitivity_max
    assert got["max"] == pytest.approx(captum, rel=1e-5)
    assert got["avg_sensitivity"] == pytest.approx(got["ratios"].mean()) and got["avg_sensitivity"] < got["max"]
    other = avg_sensitivity(explainer, x, explainer(x), n_samples=5, radius=0.05, seed=5)
    assert other["avg_sensitivity"] != got["avg_sensitivity"]  # the seed chooses the draws


class _Counting:
    """An explainer that counts its explanations and predictions and keeps its maps."""

    def __init__(self, explainer):
        self.explainer, self.explained, self.predicted, self.maps = explainer, 0, 0, []

    def __call__(self, inputs):
        self.explained += 1
        self.maps.append(self.explainer(inputs))
        return self.maps[-1]

    def predict(self, inputs):
        self.predicted += 1
        return self.explainer.predict(inputs)


def test_windowed_metrics_equal_full_sliding_window_autograd_and_share_their_draws(unet3d, volume):
    """3D UNet through 16³ windows at overlap 0.5, Gaussian blending (8 windows): the explanations of
    the perturbed images by the engine against autograd through MONAI's sliding_window_inference (the
    argmax region of each perturbed image's own prediction), the outputs from that inference.

    Φ(x), the map under evaluation, is the metrics' input: both sides use the engine's (the relative
    stabilities divide element-wise by it, which would amplify float32 differences between two
    computations of Φ(x) near its zeros: ~2e-3 of the value on the full 28×24×32 volume)."""
    x, window = volume[:1, :, :24, :20, :24], dict(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian")
    explainer = _Counting(Explainer(unet3d, "saliency", "argmax:1", abs=False, **window))
    last = {}

    def infer(image):
        return sliding_window_inference(image, window["roi_size"], 1, unet3d, overlap=window["overlap"], mode=window["mode"])

    def explain(image):
        leaf = image.clone().requires_grad_(True)
        output = infer(leaf)
        last.update(image=image, output=output.detach().double().numpy())  # the output of image, for output(image)
        return torch.autograd.grad((output * ArgmaxRegion(1).weights(output)).sum(), leaf)[0].double().numpy()

    def output(image):
        if last.get("image") is image:
            return last["output"]
        with torch.no_grad():
            return infer(image).double().numpy()

    n, radius, seed = 2, 0.05, 7
    case = MetricCase(explainer, x, explainer(x), label=None, seed=seed)
    clean = case.attribution.double().numpy()
    avg, _, ris, ros, _, _, _, maps = _naive(x, n, radius, seed, explain, output, clean_map=clean)
    explainer.explained, explainer.maps = 0, []
    options = {name: {**METRICS[name].options, "n_samples": n, "radius": radius} for name in STABILITY}
    results = {name: METRICS[name].compute(case, options[name]) for name in STABILITY}
    # one set of draws for the three: n explanations, the clean prediction and n perturbed ones
    assert (explainer.explained, explainer.predicted) == (n, n + 1)
    windowed = np.stack([m.double().numpy() for m in explainer.maps])  # the engine's maps of the draws
    np.testing.assert_allclose(windowed, maps, rtol=1e-4, atol=1e-5 * np.abs(maps).max())  # exact through windows
    assert results["avg_sensitivity"].value == pytest.approx(avg.mean(), rel=1e-4)
    for name, naive in (("relative_input_stability", ris), ("relative_output_stability", ros)):
        np.testing.assert_allclose(results[name].curve["ratios"], naive, rtol=1e-4)
        assert results[name].value == max(results[name].curve["ratios"])
    assert results["relative_output_stability"].extra == {"n_samples": n, "n_used": n, "radius": radius, "seed": seed,
                                                          "eps_min": EPS, "drop_changed": True, "map_zero_share": 0.0}
    assert results["relative_input_stability"].extra["input_zero_share"] == 0.0


def test_compute_reports_undefined_values():
    explainer = Explainer(torch.nn.Conv2d(1, 2, 1), "saliency", "class:1", abs=False)
    x = torch.rand(1, 1, 8, 8)
    result = METRICS["avg_sensitivity"].compute(MetricCase(explainer, x, torch.zeros_like(x)), {"n_samples": 2, "radius": 0.02})
    assert result.value is None and result.status == "undefined" and "all zeros" in result.error


def _quantus_inputs(explainer, x, n, radius, seed):
    """Quantus's explain_func (our maps) and a perturb_func that replays our draws (image ``i`` of
    the batch gets :func:`uniform_draws` of ``x[i]``), with a count of the draws it handed out."""
    draws = [torch.cat(batch).numpy() for batch in zip(*(uniform_draws(x[i : i + 1], n, radius, seed) for i in range(len(x))))]
    handed = []

    def perturb_func(arr, indices, **kwargs):  # Quantus's (arr (B, N), indices) call; its bounds ignored
        handed.append(draws[len(handed)])
        return handed[-1].reshape(arr.shape)

    def explain_func(model, inputs, targets, **kwargs):  # our explainer (class 1 = the targets we pass)
        return np.concatenate([explainer(torch.from_numpy(np.asarray(image[None], np.float32))).numpy() for image in inputs])

    return perturb_func, explain_func, handed, draws


def test_quantus_parity_2d(classifier2d):
    """Quantus 0.6.0's AvgSensitivity, RelativeInputStability and RelativeOutputStability on a 2D
    CNN (16×16, saliency of class 1, signed), one image per call (Quantus's batch of 1, as ours: the
    same float32 forwards, whose rounding ‖h(x) − h(x')‖ would otherwise amplify). Alignment:
    Quantus's perturb_func replaced by one replaying our draws (its defaults: uniform in [−0.2, 0.2]
    for AvgSensitivity, in [0.02, 0.2] for the relative stabilities, from numpy's global generator);
    nr_samples = our n_samples (its default 200); abs=False and normalise=False (its defaults);
    softmax=False (logits for h, as ours); a_batch = our maps and explain_func = our explainer, so Φ
    is the same on both sides. The definitions then coincide up to float32 rounding (Quantus divides
    the input in float32)."""
    quantus = require_quantus()
    torch.manual_seed(5)
    x = torch.rand(2, 1, 16, 16)
    net = _near_tie(classifier2d, x)  # image 0 near a tie of classes 1 and 2, image 1 not
    explainer = Explainer(net, "saliency", "class:1", abs=False)
    a = explainer(x)
    common = dict(disable_warnings=True, display_progressbar=False, abs=False, normalise=False)
    n = 4

    def both(function, metric, radius, image, options=None, **quantus_options):
        """(ours, Quantus's) on image ``image``, the same draws."""
        xi, ai = x[image : image + 1], a[image : image + 1]
        perturb_func, explain_func, handed, _ = _quantus_inputs(explainer, xi, n, radius, seed=0)
        reference = metric(nr_samples=n, perturb_func=perturb_func, **common, **quantus_options)(
            model=net, x_batch=xi.numpy(), y_batch=np.ones(1, int), a_batch=ai.numpy(), explain_func=explain_func,
            device="cpu", softmax=False)
        assert len(handed) == n  # Quantus drew exactly our draws
        return function(explainer, xi, ai, n_samples=n, radius=radius, seed=0, **(options or {})), float(reference[0])

    # small draws change no class: all three coincide with Quantus's defaults for changed predictions
    for name, function, metric in (("avg_sensitivity", avg_sensitivity, quantus.AvgSensitivity),
                                   ("relative_input_stability", relative_input_stability, quantus.RelativeInputStability),
                                   ("relative_output_stability", relative_output_stability, quantus.RelativeOutputStability)):
        for image in (0, 1):
            ours, reference = both(function, metric, 0.01, image)
            assert ours.get("n_used", n) == n
            assert ours[name] == pytest.approx(reference, rel=1e-5), (name, image)

    # larger draws change image 0's class in some draws: Quantus's return_nan_when_prediction_changes=True
    # makes its value NaN (np.max over a NaN), we drop those draws; without the check (Quantus False,
    # ours drop_changed=False) both keep every draw and agree
    radius = 0.05
    for name, function, metric in (("relative_input_stability", relative_input_stability, quantus.RelativeInputStability),
                                   ("relative_output_stability", relative_output_stability, quantus.RelativeOutputStability)):
        dropped, with_nan = both(function, metric, radius, 0)
        assert 0 < dropped["n_used"] < n and np.isnan(with_nan)
        kept, without = both(function, metric, radius, 0, {"drop_changed": False}, return_nan_when_prediction_changes=False)
        assert kept["n_used"] == n and kept[name] == pytest.approx(without, rel=1e-5)
        assert dropped[name] == pytest.approx(kept["ratios"][~dropped["changed"]].max())
        # ours with the drop against Quantus's own per-draw objective and class-change check
        q = metric(nr_samples=n, **common)
        model = quantus.helpers.model.pytorch_model.PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
        _, explain_func, _, draws = _quantus_inputs(explainer, x[:1], n, radius, seed=0)
        x0, a0, objective = x[:1].numpy(), a[:1].numpy(), []
        for xs in draws:
            e_xs = explain_func(net, xs, None)
            if name == "relative_input_stability":
                value = q.relative_input_stability_objective(x0, xs.copy(), a0, e_xs)
            else:
                value = q.relative_output_stability_objective(model.predict(x0), model.predict(xs), a0, e_xs)
            value[q.changed_prediction_indices_func(model, x0, xs)] = np.nan
            objective.append(value[0])
        assert dropped[name] == pytest.approx(np.nanmax(objective), rel=1e-5)
