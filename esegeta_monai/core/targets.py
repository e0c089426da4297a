"""What is explained: a scalar per sample computed from the network's (stitched) output.

Every target here is *linear in the output once its mask is fixed*:

    T(y) = Σ  G ⊙ y        with G = target.weights(y), computed without gradient.

``G`` is the gradient of the target with respect to the output. Masks that depend on the
prediction (argmax region, Otsu region) are computed once, from the prediction of the
image being explained, and then held fixed; the scores they select keep their gradient.
This is what makes the sliding-window decomposition exact (DESIGN.md §2) and what makes
integrated gradients complete: Σ attributions = T(x) − T(baseline) with the same mask.

Targets read the raw network output (logits for most MONAI bundles).

Example:
    >>> import torch
    >>> from esegeta_monai.core.targets import ArgmaxRegion, parse_targets
    >>> y = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])   # (B=1, K=2, 1, 2)
    >>> ArgmaxRegion(1)(y)                                  # class-1 logits where argmax is 1
    tensor([2.])
    >>> [t.name for t in parse_targets("argmax:0,1")]
    ['argmax0', 'argmax1']
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from esegeta_monai.core.finite import all_finite
from esegeta_monai.errors import TargetError

__all__ = [
    "Target",
    "ClassScore",
    "ArgmaxRegion",
    "OtsuRegion",
    "MaskRegion",
    "VoxelScore",
    "parse_targets",
    "split_targets",
    "TargetSpec",
    "TARGET_KINDS",
]


class Target(ABC):
    """A scalar per sample, ``T(y) = Σ G ⊙ y`` with ``G = self.weights(y)`` held fixed."""

    kind: str = ""
    #: whether ``weights`` reads the prediction (then a prediction pass is needed first)
    needs_prediction: bool = False
    #: whether the target selects voxels of a spatial output (all but :class:`ClassScore`):
    #: such a target refuses a classifier's output ``(B, K)``
    spatial: bool = True

    def __init__(self, class_index: int):
        if not isinstance(class_index, (int, np.integer)) or isinstance(class_index, bool) or class_index < 0:
            raise TargetError(f"{type(self).__name__}: class index must be an integer ≥ 0, got {class_index!r}")
        self.class_index = int(class_index)

    #: a name given from outside (e.g. made unique among a run's targets), else :attr:`default_name`
    given_name: str | None = None

    @property
    def name(self) -> str:
        """Short name used in file names, e.g. ``argmax1``."""
        return self.given_name or self.default_name

    @property
    def default_name(self) -> str:
        return f"{self.kind}{self.class_index}"

    def named(self, name: str) -> Target:
        """This target, called ``name`` in file names and results; returns it."""
        self.given_name = name
        return self

    @property
    def empty_reason(self) -> str:
        """Why the region may be empty, for :class:`~esegeta_monai.errors.EmptyTargetError`."""
        return "no voxel of the output has a non-zero weight"

    def check_output(self, output: torch.Tensor) -> None:
        """Raise :class:`TargetError` if the target does not apply to ``output``: not
        ``(B, K, ...)``, a class it lacks, or a spatial target on a classifier's ``(B, K)``."""
        if output.ndim < 2:
            raise TargetError(f"{self.name}: network output must be (B, K, ...), got shape {tuple(output.shape)}")
        if self.spatial and output.ndim == 2:
            raise TargetError(
                f"{self.name}: the network returns one score vector per image (output shape {tuple(output.shape)}): "
                f"a classifier has no spatial output, so the {self.kind}: target (a region of voxels) does not apply; "
                f"explain a class score with class:C (e.g. class:{self.class_index})"
            )
        if self.class_index >= output.shape[1]:
            raise TargetError(
                f"{self.name}: class {self.class_index} does not exist, the network has "
                f"{output.shape[1]} output channels (classes 0..{output.shape[1] - 1})"
            )

    def weights(self, output: torch.Tensor) -> torch.Tensor:
        """``G = ∂T/∂y``, same shape as ``output``, float32, no gradient."""
        channel = self.channel_weights(output)
        weight = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
        weight[:, self.class_index] = channel[:, 0]
        return weight

    def channel_weights(self, output: torch.Tensor) -> torch.Tensor:
        """The class channel of ``G``, shape ``(B, 1, *spatial)``; the other channels are zero."""
        self.check_output(output)
        with torch.no_grad():
            channel = self._class_weights(output.detach().float())
            fresh = torch.empty((output.shape[0], 1, *output.shape[2:]), dtype=torch.float32, device=output.device)
            return fresh.copy_(torch.broadcast_to(channel, (output.shape[0], *output.shape[2:]))[:, None])  # never a view of a user mask

    @abstractmethod
    def _class_weights(self, output: torch.Tensor) -> torch.Tensor:
        """Weights of the target class channel, shape ``(B, *spatial)`` (or broadcastable)."""

    def __call__(self, output: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Target value per sample; pass ``weights`` to evaluate with a mask held fixed."""
        if weights is None:
            weights = self.weights(output)
        return (output.float() * weights).flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.class_index})"


class ClassScore(Target):
    """Logit of class ``c`` of a classifier (output ``(B, K)``); summed over voxels if spatial."""

    kind = "class"
    spatial = False

    def _class_weights(self, output):
        return torch.ones(output[:, 0].shape, device=output.device)


class ArgmaxRegion(Target):
    """Scores of class ``c`` summed over the voxels whose argmax is ``c``.

    With a single output channel (sigmoid models) the region is where the logit is > 0.
    """

    kind = "argmax"
    needs_prediction = True

    @property
    def empty_reason(self) -> str:
        return f"no voxel is predicted as class {self.class_index} (argmax; with one output channel: logit > 0)"

    def _class_weights(self, output):
        if output.shape[1] == 1:
            return (output[:, 0] > 0).float()
        # "argmax == c" without argmax (slow on CPU, and an int64 volume): c beats every
        # channel before it strictly and every channel after it or ties (argmax's first-max rule)
        scores = output[:, self.class_index]
        region = torch.ones_like(scores, dtype=torch.bool)
        for other in range(output.shape[1]):
            if other != self.class_index:
                region &= scores > output[:, other] if other < self.class_index else scores >= output[:, other]
        return region.float()


class OtsuRegion(Target):
    """Scores of class ``c`` summed over voxels above Otsu's threshold of the class map.

    The class map is min–max normalised per sample; the threshold comes from
    ``skimage.filters.threshold_otsu``. The mask carries no gradient, the scores do (the
    original TorchEsegeta summed voxel counts, whose gradient is zero).
    """

    kind = "otsu"
    needs_prediction = True

    @property
    def empty_reason(self) -> str:
        return f"the class-{self.class_index} map is constant (or not finite): no voxel lies above Otsu's threshold"

    def _class_weights(self, output):
        from skimage.filters import threshold_otsu

        masks = []
        for sample in output[:, self.class_index]:
            values = sample.cpu().numpy()
            low, high = float(values.min()), float(values.max())
            if not np.isfinite(low) or not np.isfinite(high) or high <= low:
                masks.append(torch.zeros_like(sample))
                continue
            normalised = (values - low) / (high - low)
            threshold = threshold_otsu(normalised)
            masks.append(torch.as_tensor(normalised > threshold, dtype=torch.float32, device=sample.device))
        return torch.stack(masks)


class MaskRegion(Target):
    """Scores of class ``c`` weighted by a user mask on the output grid.

    ``mask`` may be a path (NIfTI or anything MONAI's ``LoadImage`` reads, already on the
    network's grid — the CLI resamples label files through the preprocessing for you), an
    array/tensor broadcastable to the output's spatial shape — ``(*spatial)``,
    ``(1|B, *spatial)`` or ``(1|B, 1, *spatial)`` — or ``box=[(start, stop), ...]`` per
    spatial axis. Non-binary masks weight the scores.
    """

    kind = "mask"

    def __init__(self, class_index: int, mask=None, box: Sequence[Sequence[int]] | None = None, label: str | None = None):
        super().__init__(class_index)
        self.label = label or (Path(mask).name.split(".")[0] if isinstance(mask, (str, Path)) else None)
        if (mask is None) == (box is None):
            raise TargetError("MaskRegion: give exactly one of mask= (path, array, tensor) or box=[(start, stop), ...]")
        self.box = None if box is None else [tuple(int(v) for v in pair) for pair in box]
        if self.box is not None and any(len(pair) != 2 or pair[0] >= pair[1] for pair in self.box):
            raise TargetError(f"MaskRegion: box must be [(start, stop), ...] with start < stop per axis, got {box}")
        self.mask = _load_mask(mask) if isinstance(mask, (str, Path)) else mask

    @property
    def empty_reason(self) -> str:
        if self.box is not None:
            return f"the box {self.box} holds no voxel of the output grid"
        return "the mask is zero everywhere on the output grid (resampled onto the network's grid)"

    @property
    def default_name(self) -> str:
        """``mask1``, or ``mask1_<label>`` for a mask file."""
        return f"{self.kind}{self.class_index}_{self.label}" if self.label else f"{self.kind}{self.class_index}"

    def _class_weights(self, output):
        batch, spatial = output.shape[0], tuple(output.shape[2:])
        if self.box is not None:
            if len(self.box) != len(spatial):
                raise TargetError(f"{self.name}: box has {len(self.box)} axes, the output has {len(spatial)}")
            region = torch.zeros((batch, *spatial), device=output.device)
            region[(slice(None), *[slice(a, b) for a, b in self.box])] = 1.0
            return region
        mask = torch.as_tensor(np.asarray(self.mask) if not torch.is_tensor(self.mask) else self.mask)
        mask = mask.to(device=output.device, dtype=torch.float32)
        if mask.ndim == len(spatial) + 2:
            if mask.shape[1] != 1:
                raise TargetError(f"{self.name}: a (B, C, ...) mask must have one channel, got shape {tuple(mask.shape)}")
            mask = mask[:, 0]
        elif mask.ndim == len(spatial):
            mask = mask[None]
        if mask.ndim != len(spatial) + 1:
            raise TargetError(
                f"{self.name}: mask of shape {tuple(mask.shape)} does not fit the output's spatial shape {spatial}"
            )
        try:
            mask = torch.broadcast_to(mask, (batch, *spatial))
        except RuntimeError:
            raise TargetError(
                f"{self.name}: mask of shape {tuple(mask.shape)} is not broadcastable to the output's "
                f"(B, *spatial) = {(batch, *spatial)}; resample the mask to the network's grid"
            ) from None
        if not all_finite(mask):
            raise TargetError(f"{self.name}: mask contains NaN or Inf values")
        return mask


class VoxelScore(Target):
    """Score of class ``c`` at one voxel ``index`` (spatial indices on the output grid)."""

    kind = "voxel"

    def __init__(self, class_index: int, index: Sequence[int]):
        super().__init__(class_index)
        self.index = tuple(int(i) for i in index)

    @property
    def default_name(self) -> str:
        """``voxel1_10-20-30``: the class and the voxel."""
        return f"{self.kind}{self.class_index}_" + "-".join(map(str, self.index))

    def _class_weights(self, output):
        spatial = tuple(output.shape[2:])
        if len(self.index) != len(spatial) or any(not 0 <= i < s for i, s in zip(self.index, spatial)):
            raise TargetError(f"{self.name}: voxel {self.index} is outside the output's spatial shape {spatial}")
        weight = torch.zeros((output.shape[0], *spatial), device=output.device)
        weight[(slice(None), *self.index)] = 1.0
        return weight


def _load_mask(path) -> np.ndarray:
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.is_file():
        raise TargetError(f"mask file {path} does not exist; give an existing label/mask file")
    try:
        return np.asarray(LoadImage(image_only=True)(str(path)))
    except Exception as error:  # the reader's own error says what is wrong with the file
        raise TargetError(f"mask file {path} cannot be read: {error}") from None


TARGET_KINDS = {
    "class": "class:C — logit of class C (classifiers)",
    "argmax": "argmax:C — class-C scores over voxels whose argmax is C",
    "otsu": "otsu:C — class-C scores over voxels above Otsu's threshold of the class map",
    "mask": "mask:C:FILE — class-C scores inside a mask/label file (non-zero voxels)",
    "voxel": "voxel:C:I,J,K — class-C score at one voxel of the network's grid",
}


def _parse_spec(spec: str) -> tuple[str, list[int], str]:
    """``(kind, classes, extra)`` of a spec, checked."""
    if not isinstance(spec, str) or ":" not in spec:
        raise TargetError(f"target {spec!r} is not of the form KIND:CLASSES[:EXTRA]; kinds: " + "; ".join(TARGET_KINDS.values()))
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in TARGET_KINDS:
        close = difflib.get_close_matches(kind, TARGET_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TargetError(f"unknown target kind {kind!r} in {spec!r}{hint}; kinds: " + "; ".join(TARGET_KINDS.values()))
    classes_text, _, extra = rest.partition(":")
    try:
        classes = [int(c) for c in classes_text.split(",") if c.strip() != ""]
    except ValueError:
        raise TargetError(f"target {spec!r}: classes must be integers separated by commas, got {classes_text!r}") from None
    if not classes:
        raise TargetError(f"target {spec!r}: no class given; e.g. {kind}:1")
    if kind in ("mask", "voxel") and not extra:
        raise TargetError(f"target {spec!r}: {TARGET_KINDS[kind]}")
    if kind not in ("mask", "voxel") and extra:
        raise TargetError(f"target {spec!r}: unexpected ':{extra}'; {TARGET_KINDS[kind]}")
    return kind, classes, extra


@dataclass(frozen=True)
class TargetSpec:
    """One class of a target spec, before any file is read: ``kind``, ``class_index`` and the
    kind's extra part (a mask file, a voxel index).

    Example:
        >>> spec = split_targets("mask:1,2:/data/roi.nii.gz")[1]
        >>> spec.text, spec.name, spec.mask_file
        ('mask:2:/data/roi.nii.gz', 'mask2_roi', '/data/roi.nii.gz')
    """

    kind: str
    class_index: int
    extra: str = ""

    @property
    def text(self) -> str:
        """The spec of this one class, e.g. ``argmax:1``."""
        return f"{self.kind}:{self.class_index}" + (f":{self.extra}" if self.extra else "")

    @property
    def mask_file(self) -> str | None:
        return self.extra if self.kind == "mask" else None

    def resolved(self) -> TargetSpec:
        """This spec with its mask file as a resolved absolute path, so that its :attr:`text`
        names the same target from any working folder."""
        return TargetSpec(self.kind, self.class_index, str(Path(self.extra).expanduser().resolve())) if self.mask_file else self

    @property
    def name(self) -> str:
        """The target's name in file names (as :attr:`Target.name`), read from the spec alone."""
        if self.kind == "mask":
            return f"mask{self.class_index}_{_mask_label(self.extra)}"
        if self.kind == "voxel":
            return f"voxel{self.class_index}_" + "-".join(self.extra.split(","))
        return f"{self.kind}{self.class_index}"

    def build(self, mask_loader=None) -> Target:
        """The :class:`Target` (a mask file read by ``mask_loader``, default: as it is)."""
        return parse_targets(self.text, mask_loader)[0]


def _mask_label(path: str) -> str:
    return Path(path).name.split(".")[0]


def split_targets(spec: str) -> list[TargetSpec]:
    """The one-class specs of a target spec, checked but with no file read: ``argmax:1,2`` gives
    ``argmax:1`` and ``argmax:2``."""
    kind, classes, extra = _parse_spec(spec)
    if kind == "voxel":
        try:
            [int(i) for i in extra.split(",")]
        except ValueError:
            raise TargetError(f"target {spec!r}: voxel index must be integers like 10,20,30, got {extra!r}") from None
    return [TargetSpec(kind, c, extra) for c in classes]


def parse_targets(spec: str, mask_loader=None) -> list[Target]:
    """Parse a target spec such as ``argmax:1``, ``otsu:1,2``, ``mask:1:lesion.nii.gz``,
    ``voxel:1:10,20,30`` or ``class:3``; several classes give several targets.

    ``mask_loader(path)`` may turn a mask file into an array on the network grid (the CLI
    passes one that applies the bundle preprocessing); by default the file is read as is.
    """
    kind, classes, extra = _parse_spec(spec)
    if kind == "mask":
        mask = mask_loader(extra) if mask_loader is not None else _load_mask(extra)
        return [MaskRegion(c, mask, label=_mask_label(extra)) for c in classes]
    if kind == "voxel":
        try:
            index = [int(i) for i in extra.split(",")]
        except ValueError:
            raise TargetError(f"target {spec!r}: voxel index must be integers like 10,20,30, got {extra!r}") from None
        return [VoxelScore(c, index) for c in classes]
    target_class = {"class": ClassScore, "argmax": ArgmaxRegion, "otsu": OtsuRegion}[kind]
    return [target_class(c) for c in classes]
