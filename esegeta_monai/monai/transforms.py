"""MONAI transforms that explain: :class:`Explain` (array) and :class:`Explaind` (dictionary).

They run after a bundle's preprocessing, inside a ``Compose``. Their outputs are MetaTensors
that carry the input's meta and ``applied_operations``, so MONAI's own ``Invertd`` and
``SaveImaged`` bring the maps back onto the original image grid::

    LoadImaged → bundle preprocessing → Explaind → Invertd → SaveImaged

Window settings come from an ``inferer`` object (e.g. the bundle's ``SlidingWindowInferer``;
a ``SimpleInferer`` or ``None`` means the whole image) and can be overridden one by one
(``roi_size=…``). Inputs are one channel-first image ``(C, *spatial)`` as usual in MONAI
transforms, or a batch ``(B, C, *spatial)`` with ``batched=True``. ``channel_reduce``
chooses one map (``"sum"``, the default, or ``"mean"`` over input channels) or one map per
input channel (``"none"``, e.g. one per MRI sequence).

Example:
    >>> import torch
    >>> from monai.inferers import SlidingWindowInferer
    >>> from monai.networks.nets import UNet
    >>> from esegeta_monai.monai.transforms import Explaind
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(3, 2, 2, (4, 8), (2,), num_res_units=0).eval()
    >>> explain = Explaind("image", net, methods=["saliency", {"name": "integrated_gradients", "n_steps": 4}],
    ...                    targets="argmax:1", inferer=SlidingWindowInferer((16, 16, 16), overlap=0.25))
    >>> out = explain({"image": torch.rand(2, 20, 20, 20)})
    >>> sorted(k for k in out if k != "image"), tuple(out["image_saliency_argmax1"].shape)
    (['image_integrated_gradients_argmax1', 'image_saliency_argmax1'], (1, 20, 20, 20))
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from esegeta_monai.core.options import RunOptions
from esegeta_monai.core.targets import Target, parse_targets, split_targets
from esegeta_monai.core.window_pass import with_meta_of
from esegeta_monai.core.windows import WindowSettings
from esegeta_monai.errors import ConfigError, EsegetaError, InputError, MethodError
from esegeta_monai.maps import MapResult, check_channel_reduce, compute_maps, reduce_channels
from esegeta_monai.methods import get_method
from esegeta_monai.methods.spec import MethodSpec, parse_methods, unique_specs

__all__ = ["Explain", "Explaind", "ExplainSettings", "OUTPUT_KEY_PATTERN"]

logger = logging.getLogger(__name__)

#: default name of an output: the input key, the method's label and the target's name
OUTPUT_KEY_PATTERN = "{key}_{method}_{target}"
ON_ERROR = ("raise", "skip")


class ExplainSettings:
    """What :class:`Explain` and :class:`Explaind` share: network, methods, targets, windows."""

    def __init__(self, network, methods, targets, inferer, window: dict[str, Any], channel_reduce: str, batched: bool,
                 options: RunOptions, spatial_dims: int | None):
        check_channel_reduce(channel_reduce)
        self.network = network
        self.methods: list[MethodSpec] = unique_specs(parse_methods(methods, "Explaind methods"), "Explaind methods")
        for method in self.methods:  # unknown methods and keywords fail here, before any image
            get_method(method.name).validate(method.options)
        self.target_specs = [targets] if isinstance(targets, (str, Target)) else list(targets)
        for spec in self.target_specs:  # fail now on a malformed spec, not at the first image
            if isinstance(spec, str) and not spec.startswith("mask:"):
                parse_targets(spec)
        self.window = WindowSettings.from_inferer(inferer, spatial_dims).updated(**window)
        self.channel_reduce = channel_reduce
        self.batched = batched
        self.options = options

    def targets_for(self, image: torch.Tensor, names: dict[str, str] | None = None) -> list[Target]:
        """Parsed targets; mask files are resampled onto ``image``'s grid (one image, ``(C, *spatial)``).
        ``names`` renames targets by their one-class spec (``mask:1:/abs/roi.nii.gz`` → a unique name)."""
        from esegeta_monai.monai.io.masks import load_mask_like

        targets: list[Target] = []
        for spec in self.target_specs:
            if isinstance(spec, Target):
                parsed = [spec]
            else:
                parsed = []
                for one in split_targets(spec):
                    target = one.build(mask_loader=lambda path: load_mask_like(path, image))
                    resolved = one.resolved().text
                    parsed.append(target.named(names[resolved]) if names and resolved in names else target)
            targets.extend(t for t in parsed if t.name not in {k.name for k in targets})
        return targets

    def batch_of(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(image):
            raise InputError(f"expected a tensor image, got {type(image).__name__}; load it with LoadImaged first")
        leading = 2 if self.batched else 1
        roi = self.window.roi_size
        spatial = len(roi) if roi is not None else None
        if image.ndim < leading + 1 or (spatial is not None and image.ndim != leading + spatial):
            layout = "(B, C, *spatial)" if self.batched else "(C, *spatial), channel first"
            dims = f" with {spatial} spatial dimensions (the window is {tuple(roi)})" if spatial else ""
            raise InputError(f"image of shape {tuple(image.shape)}: expected {layout}{dims} — EnsureChannelFirstd in the preprocessing?")
        return image if self.batched else image[None]

    def results(self, image: torch.Tensor, prediction: torch.Tensor | None = None,
                pairs: set[tuple[str, str]] | None = None, names: dict[str, str] | None = None) -> list[MapResult]:
        """Every (method, target) result on ``image`` (``pairs``: only these ``(label, target name)``;
        ``names``: target names by one-class spec, see :meth:`targets_for`)."""
        x = self.batch_of(image)
        if prediction is not None and not self.batched:
            prediction = prediction[None]
        return list(compute_maps(self.network, x, self.methods, self.targets_for(x[0], names), self.window, self.options,
                                 prediction=prediction, pairs=pairs))

    def as_output(self, attribution: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Reduced over input channels, batch dimension as the input's, meta of the input."""
        attribution = reduce_channels(attribution, self.channel_reduce)
        if not self.batched:
            attribution = attribution[0]
        if isinstance(image, MetaTensor):
            return with_meta_of(attribution, image)
        return attribution


class Explain(ExplainSettings, Transform):
    """Array transform: one method and one target → the attribution map of an image.

    Args:
        network: the model (e.g. a bundle's ``network``).
        method: a method name (``esegeta methods``) or ``{"name": ..., **keywords}``.
        target: a target spec (``argmax:1``, ``class:1``, ``mask:1:FILE`` …) or a ``Target``.
        inferer: take the window settings from this inferer (``SlidingWindowInferer``);
            ``None``/``SimpleInferer``: the whole image.
        channel_reduce: ``"sum"`` (default) or ``"mean"`` over input channels, or ``"none"``.
        batched: the input is a batch ``(B, C, *spatial)`` (default: one image ``(C, *spatial)``).
        amp, device, local, progress, timeout: as :class:`~esegeta_monai.explainer.Explainer`.
        spatial_dims: needed only when the inferer's ``roi_size`` is a single number.
        window: window settings overriding the inferer's (``roi_size``, ``overlap``, …).

    ``__call__(img, prediction=None)`` returns the map; ``prediction`` reuses the network's
    output for targets that read it. A failing method raises.

    Example:
        >>> import torch
        >>> from esegeta_monai.monai.transforms import Explain
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Conv2d(3, 2, 3, padding=1)
        >>> Explain(net, "saliency", "argmax:1", channel_reduce="none")(torch.rand(3, 16, 16)).shape
        torch.Size([3, 16, 16])
    """

    def __init__(self, network: torch.nn.Module, method: str | dict = "saliency", target: str | Target = "argmax:1",
                 inferer: Any = None, channel_reduce: str = "sum", batched: bool = False, amp: bool = False, device=None,
                 local: bool = False, progress: bool = False, timeout: float | None = None, spatial_dims: int | None = None,
                 **window: Any):
        super().__init__(network, [method], [target], inferer, window, channel_reduce, batched,
                         RunOptions(amp, device, local, progress, timeout), spatial_dims)

    def __call__(self, img: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        (result,) = self.results(img, prediction)
        if result.status != "ok":
            raise MethodError(f"{result.method} {result.target}: {result.error}")
        return self.as_output(result.attribution, img)


class Explaind(ExplainSettings, MapTransform):
    """Dictionary transform: every method × target for every key; outputs under new keys.

    Args:
        keys: the image key(s) to explain.
        network: the model.
        methods: method names and/or ``{"name": ..., "as": label, **keywords}`` dicts.
        targets: one spec/``Target`` or a list (``argmax:1``, ``otsu:1``, ``class:1`` …).
        output_key: pattern of the output keys, with ``{key}``, ``{method}`` (its label) and
            ``{target}`` (e.g. ``argmax1``); default ``"{key}_{method}_{target}"``.
        prediction_key: a key holding the network's prediction for the image (reused by
            targets that read it); default: computed here, once per image.
        on_error: ``"raise"`` (default) or ``"skip"``: log the failure, leave its key out and
            go on with the other maps.
        allow_missing_keys: don't raise when a key is missing.
        inferer, channel_reduce, batched, amp, device, local, progress, timeout,
            spatial_dims, window: as :class:`Explain`.

    The maps are MetaTensors with the image's meta and ``applied_operations``: invert them
    with ``Invertd(keys=<output key>, transform=<preprocessing>, orig_keys=<image key>)``.
    """

    def __init__(self, keys: KeysCollection, network: torch.nn.Module, methods: Sequence[str | dict] = ("saliency",),
                 targets: str | Target | Sequence[str | Target] = "argmax:1", output_key: str = OUTPUT_KEY_PATTERN,
                 inferer: Any = None, channel_reduce: str = "sum", batched: bool = False, prediction_key: str | None = None,
                 on_error: str = "raise", allow_missing_keys: bool = False, amp: bool = False, device=None,
                 local: bool = False, progress: bool = False, timeout: float | None = None, spatial_dims: int | None = None,
                 **window: Any):
        MapTransform.__init__(self, keys, allow_missing_keys)
        ExplainSettings.__init__(self, network, list(methods), targets, inferer, window, channel_reduce, batched,
                                 RunOptions(amp, device, local, progress, timeout), spatial_dims)
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error={on_error!r}; choose one of {', '.join(ON_ERROR)}")
        try:
            output_key.format(key="k", method="m", target="t")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"output_key {output_key!r} may only use {{key}}, {{method}} and {{target}} ({e})") from None
        self.output_key = output_key
        self.prediction_key = prediction_key
        self.on_error = on_error

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prediction = d.get(self.prediction_key) if self.prediction_key is not None else None
        for key in self.key_iterator(d):
            for result in self.results(d[key], prediction):
                name = self.output_key.format(key=key, method=result.method, target=result.target)
                if result.status == "ok":
                    d[name] = self.as_output(result.attribution, d[key])
                    continue
                message = f"{_source(d[key], key)}: {result.method} {result.target} {result.status}: {result.error}"
                if self.on_error == "raise":
                    raise EsegetaError(message)
                logger.error("%s (skipped)", message)
        return d


def _source(image: Any, key: Hashable) -> str:
    meta = getattr(image, "meta", {}) or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = ", ".join(map(str, source))
    return str(source or key)
