"""Every documented keyword of every method reaches the method: from Python (:class:`Explainer`),
from a run config (``esegeta explain``'s method entries) and from the bundle override (the Ignite
handler). A keyword that shares its name with one of the Explainer's own arguments (integrated
gradients' ``method``) used to collide with it."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients

from esegeta_monai import Explainer
from esegeta_monai.core.targets import ClassScore
from esegeta_monai.maps import compute_maps
from esegeta_monai.methods import available_methods, get_method
from esegeta_monai.methods.spec import parse_methods
from test_methods_all import options_for


def every_keyword(method: str) -> dict:
    """All documented keywords of ``method`` given explicitly (their defaults, or the test
    network's layers where there is no usable default)."""
    explicit = {key: param.default for key, param in get_method(method).params.items()}
    explicit.update(options_for(method, "2d"))
    return explicit


@pytest.mark.parametrize("method", available_methods())
def test_every_documented_keyword_is_accepted_from_python(classifier2d, method):
    explainer = Explainer(classifier2d, method, ClassScore(1), **every_keyword(method))
    assert set(explainer.options) == set(get_method(method).params)


@pytest.mark.parametrize("method", ["integrated_gradients", "layer_conductance", "internal_influence"])
def test_a_keyword_named_method_reaches_the_method_from_a_run_config(classifier2d, method):
    """``{integrated_gradients: {method: riemann_trapezoid}}`` in a run config gives an ok map,
    different from the default Gauss-Legendre rule's."""
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    layer = options_for(method, "2d")
    entries = [{method: {"n_steps": 4, **layer}},
               {method: {"n_steps": 4, "method": "riemann_trapezoid", "as": "trapezoid", **layer}}]
    results = {r.method: r for r in compute_maps(classifier2d, x, parse_methods(entries), [ClassScore(1)])}
    assert {r.status for r in results.values()} == {"ok"}, {k: r.error for k, r in results.items()}
    assert not torch.allclose(results[method].attribution, results["trapezoid"].attribution)


def test_integrated_gradients_with_the_trapezoid_rule_equals_captum(classifier2d):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = Explainer(classifier2d, "integrated_gradients", ClassScore(1), method="riemann_trapezoid", n_steps=8)(x)
    reference = IntegratedGradients(classifier2d).attribute(x, target=1, method="riemann_trapezoid", n_steps=8)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_a_keyword_named_method_reaches_the_method_from_the_bundle_handler(tmp_path):
    """The handler (what the bundle override attaches) records the trapezoid map as ok."""
    import json

    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.handlers import ExplainHandler
    from tiny_bundle import make_tiny_bundle

    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny"))
    loader = DataLoader(Dataset([{"image": str(s)} for s in bundle.samples[:1]], transform=bundle.preprocessing), batch_size=1)
    evaluator = SupervisedEvaluator(torch.device("cpu"), loader, bundle.network, inferer=bundle.inferer_object)
    methods = [{"integrated_gradients": {"n_steps": 2, "method": "riemann_trapezoid"}}]
    ExplainHandler(methods=methods, targets=["argmax:1"], output_dir=tmp_path / "out",
                   preprocessing=bundle.preprocessing).attach(evaluator)
    with torch.no_grad():
        evaluator.run()
    lines = (tmp_path / "out" / "esegeta_journal.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if json.loads(line)["type"] == "record"]
    assert [r["status"] for r in records] == ["ok"], records
