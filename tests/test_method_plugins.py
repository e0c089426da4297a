"""Methods of other packages, found through the ``esegeta_monai.methods`` entry-point group."""

import sys

import pytest
import torch

from esegeta_monai import Explainer
from esegeta_monai.methods import registry

PLUGIN = '''
from esegeta_monai.methods.base import Method, Param, is_bool


class DoubledSaliency(Method):
    """Twice the signed saliency: a lab's own method."""

    name = "lab_doubled_saliency"
    family = "gradient"
    library = "mylab"
    summary = "twice the gradient"
    params = {"abs": Param(False, is_bool, "absolute value")}

    def run(self, window_pass, inputs, options):
        from esegeta_monai.methods import get_method

        saliency = get_method("saliency").run(window_pass, inputs, {**get_method("saliency").validate({}), "abs": False})
        return 2 * (saliency.abs() if options["abs"] else saliency)
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    (tmp_path / "mylab_methods.py").write_text(PLUGIN)
    info = tmp_path / "mylab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[esegeta_monai.methods]\nlab_doubled = mylab_methods:DoubledSaliency\n"
                                           "broken = mylab_missing:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._LOADED, "plugins", False)
    yield
    registry._REGISTRY.pop("lab_doubled_saliency", None)
    sys.modules.pop("mylab_methods", None)


def test_an_installed_plugin_is_a_method_like_any_other(installed_plugin, caplog):
    assert "lab_doubled_saliency" in registry.available_methods()
    assert "mylab_missing" in caplog.text  # a broken plugin is reported and skipped
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(1, 1, 12, 12)
    doubled = Explainer(net, "lab_doubled_saliency", "voxel:1:5,5")(x)  # one voxel: never an empty region
    saliency = Explainer(net, "saliency", "voxel:1:5,5", abs=False)(x)
    torch.testing.assert_close(doubled, 2 * saliency)
