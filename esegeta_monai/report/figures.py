"""Figures of attribution maps over their scan, ready for a slide: PNG files drawn with matplotlib (Agg).

:func:`render_map_figure` draws one map: the scan in grey with the map as a colour overlay in the
axial, coronal and sagittal planes through the map's peak (``argmax |map|``) with a zoom on the peak,
a second row through the centre of a predicted region when ``prediction`` and ``region_label`` are
given, and a row of maximum-intensity projections of ``|map|`` over the scan's. A 2D image gets the
image itself and the zooms. :func:`render_comparison` draws several maps of one target in a grid
(rows = methods, columns = planes through one shared point).

Display rules (:func:`colour_scale`): a signed map (clearly positive and negative values) uses the
diverging ``RdBu_r`` with ``vmin = -vmax`` so that zero is the colour map's centre; a non-negative one
the sequential ``inferno`` from 0. ``vmax`` is the 99.5th percentile of ``|map|`` over its non-zero finite
voxels (the maximum if that is 0), never a min–max stretch, and is written on the colour bar. The
overlay's opacity grows with ``|value| / vmax`` so that the anatomy shows through small values. Planes
are drawn in radiological convention with orientation letters and the voxels' physical aspect ratio
(:mod:`esegeta_monai.report.display`); the prediction's outline is drawn on top.

How it is drawn: the panels are composed as one picture in numpy (every voxel a block of pixels of its
physical size, so a figure costs a few tenths of a second) and matplotlib adds the text, outlines and
colour bars, all placed in canvas pixels. :class:`Panel` maps a voxel to its pixel in the figure, so a
test can check a rendered picture (:meth:`DrawnFigure.rgb`) without reading text.

Example:
    >>> import os, tempfile, numpy as np, nibabel as nib
    >>> folder = tempfile.mkdtemp()
    >>> scan, saliency = os.path.join(folder, "scan.nii.gz"), os.path.join(folder, "map.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 20, 12), dtype=np.float32), np.eye(4)), scan)
    >>> values = np.zeros((24, 20, 12), np.float32); values[5, 6, 7] = 2.0
    >>> nib.save(nib.Nifti1Image(values, np.eye(4)), saliency)
    >>> info = render_map_figure(scan, saliency, os.path.join(folder, "map.png"), title="demo")
    >>> info.peak_index, info.cmap, info.vmin, info.vmax, info.planes, info.width_px
    ((5, 6, 7), 'inferno', 0.0, 2.0, ('axial', 'coronal', 'sagittal'), 1600)
"""

from __future__ import annotations

import functools
import os
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from matplotlib import colormaps, patheffects
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D, Bbox

from esegeta_monai.report.display import (
    IMAGE_PLANE, Volume, load_volume, plane_image, plane_letters, plane_pixel, plane_projection, plane_spacing,
)

__all__ = [
    "SIGNED_CMAP", "POSITIVE_CMAP", "PERCENTILE", "ColourScale", "colour_scale", "FigureInfo", "Panel", "ColourBar",
    "DrawnFigure", "panel_rgb", "map_figure", "comparison_figure", "render_map_figure", "render_comparison",
]

SIGNED_CMAP = "RdBu_r"
POSITIVE_CMAP = "inferno"
#: the percentile of ``|map|`` (non-zero finite voxels) at which the colour scale is clipped
PERCENTILE = 99.5
#: negative values reaching this share of ``vmax`` make a map signed (smaller ones are rounding noise)
SIGNED_SHARE = 0.01
#: the overlay's opacity: ``MAX_ALPHA * min(1, |value| / (ALPHA_FULL * vmax))``
MAX_ALPHA = 0.9
ALPHA_FULL = 0.5
#: the scan's grey window: these percentiles of its finite voxels
GREY_PERCENTILES = (0.5, 99.5)
ZOOM_MM = 25.0
DPI = 100
#: a thumbnail's longest side (pixels) and the panels it shows, the first one drawn
THUMBNAIL_PX = 320
#: zlib level of the PNGs: 1 writes ~4× faster than the default 6, for files ~1.3× larger
PNG_COMPRESSION = 1
THUMBNAIL_PANELS = ("peak/axial", "peak/image")
WIDTH_PX = 1600
MAX_HEIGHT_PX = 2400
OUTLINE_COLOURS = (("green", "#39ff14"), ("cyan", "#00e5ff"), ("yellow", "#ffe600"), ("magenta", "#ff4dff"),
                   ("orange", "#ff8c00"), ("white", "#ffffff"))

# the page, in canvas pixels (100 dpi: 10 pt = 13.9 px)
_LEFT = 72         # row labels
_RIGHT = 170       # colour bar, its ticks and label
_GAP = 10          # between panels
_ROW_GAP = 12
_TITLE_STRIP = 24  # panel titles above a row
_BOTTOM = 12
_BAR_GAP, _BAR_WIDTH = 14, 22
_TEXT = {"fontsize": 11}
_SMALL = {"fontsize": 10}
_CHAR_WIDTH = 0.62   # of the font size in pixels, a generous average for DejaVu Sans
_LINE_HEIGHT = 1.35
_LETTER_STYLE = dict(color="white", fontsize=11, fontweight="bold",
                     path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")])


@dataclass(frozen=True)
class ColourScale:
    """How a map's values become colours: ``[vmin, vmax]`` on ``cmap``; ``rule`` says how ``vmax`` was chosen
    (``"p99.5"``, ``"max"`` when the percentile is 0, ``"all zero"``) and ``of`` of what."""

    vmin: float
    vmax: float
    cmap: str
    signed: bool
    rule: str
    of: str = "|map|"

    @property
    def norm(self) -> Normalize:
        """The normalisation of the colour bar and of the overlay (clipped to ``[vmin, vmax]``)."""
        return Normalize(self.vmin, self.vmax, clip=True)

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """RGBA colours of ``values`` (NaN as 0): the colour map's colour and an opacity ramping with
        ``|value| / vmax`` (0 at 0)."""
        values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=self.vmax, neginf=self.vmin)
        colours = colormaps[self.cmap](self.norm(values).filled(0.0))
        colours[..., 3] = MAX_ALPHA * np.clip(np.abs(values) / (ALPHA_FULL * self.vmax), 0.0, 1.0)
        return colours

    def describe(self) -> str:
        """Where the colours are clipped, in words (e.g. ``"clipped at ±p99.5 of |map| = 1.18"``)."""
        if self.rule == "all zero":
            return "all zero"
        limit = f"p{PERCENTILE:g} of {self.of}" if self.rule.startswith("p") else f"max of {self.of}"
        return f"clipped at {'±' if self.signed else ''}{limit} = {self.vmax:.3g}"


def colour_scale(values: np.ndarray, signed: bool | None = None, of: str = "|map|") -> ColourScale:
    """The colour scale of a map (non-finite values ignored); ``signed`` forces the kind.

    Example:
        >>> colour_scale(np.array([0.0, 1.0, 2.0, 4.0]))
        ColourScale(vmin=0.0, vmax=3.98, cmap='inferno', signed=False, rule='p99.5', of='|map|')
        >>> scale = colour_scale(np.array([-3.0, 0.0, 1.0, 4.0]))
        >>> scale.cmap, scale.vmin == -scale.vmax, float(scale.norm(0.0))
        ('RdBu_r', True, 0.5)
    """
    finite = np.asarray(values, np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    magnitude = np.abs(finite[finite != 0])
    if magnitude.size == 0:
        vmax, rule = 1.0, "all zero"
    else:
        vmax, rule = float(np.percentile(magnitude, PERCENTILE)), f"p{PERCENTILE:g}"
        if vmax <= 0:
            vmax, rule = float(magnitude.max()), "max"
    vmax = float(f"{vmax:.6g}")
    if signed is None:
        lowest = float(finite.min()) if finite.size else 0.0
        signed = lowest < 0 and -lowest >= SIGNED_SHARE * vmax and float(finite.max()) > 0
    if signed:
        return ColourScale(-vmax, vmax, SIGNED_CMAP, True, rule, of)
    return ColourScale(0.0, vmax, POSITIVE_CMAP, False, rule, of)


@dataclass
class FigureInfo:
    """What a figure shows, for a report or a test.

    Attributes:
        path: the PNG written.
        width_px, height_px: its size in pixels.
        planes: the planes drawn per row (``("axial", "coronal", "sagittal")`` or ``("image",)``).
        rows: the rows' names (``"peak"``, ``"region"``, ``"mip"``; method labels in a comparison).
        peak_index: the (first) map's peak ``argmax |map|`` in the map file's own array index; ``None`` for
            an all-zero map.
        peak_value: the map's value there.
        point_index: where the planes cut (file index): the peak in a map figure, the shared point in a
            comparison.
        region_index: the voxel drawn as the target region's centre (file index), or ``None``.
        scales: the colour scale of each map (one in a map figure, one per row in a comparison).
        seconds: time spent reading, drawing and writing.
        notes: remarks shown in the title (all-zero map, NaN voxels ignored, absent region...).
    """

    path: str
    width_px: int
    height_px: int
    planes: tuple[str, ...]
    rows: tuple[str, ...]
    peak_index: tuple[int, ...] | None
    peak_value: float
    point_index: tuple[int, ...]
    region_index: tuple[int, ...] | None
    scales: tuple[ColourScale, ...]
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def vmin(self) -> float:
        return self.scales[0].vmin

    @property
    def vmax(self) -> float:
        return self.scales[0].vmax

    @property
    def cmap(self) -> str:
        return self.scales[0].cmap

    @property
    def range_rule(self) -> str:
        return self.scales[0].rule


@dataclass(frozen=True)
class Panel:
    """A drawn panel: the ``plane`` (cut through the display voxel ``point``, or a projection when it is
    ``()``), its box in canvas pixels from the top-left (``left``, ``top``, ``width``, ``height``) and the
    part of the plane's image it shows (rows ``row0`` to ``row0 + rows``, columns ``col0`` to ``col0 + cols``)."""

    plane: str
    point: tuple[int, ...]
    shape: tuple[int, ...]
    left: int
    top: int
    width: int
    height: int
    row0: int
    col0: int
    rows: int
    cols: int

    def pixel_of(self, display_index: Sequence[int]) -> tuple[float, float]:
        """Where the centre of the display voxel ``display_index`` is drawn: ``(x, y)`` canvas pixels from the
        top-left corner (the ``display_index`` component across the plane is ignored)."""
        row, col = plane_pixel(self.plane, display_index, self.shape)
        return self.pixel_of_image(row, col)

    def pixel_of_image(self, row: float, col: float) -> tuple[float, float]:
        """Where the centre of the plane image's pixel ``(row, col)`` is drawn."""
        return (self.left + (col - self.col0 + 0.5) * self.width / self.cols,
                self.top + (row - self.row0 + 0.5) * self.height / self.rows)

    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in canvas pixels (right and bottom excluded)."""
        return self.left, self.top, self.left + self.width, self.top + self.height


@dataclass(frozen=True)
class ColourBar:
    """A drawn colour bar: its box in canvas pixels from the top-left and its scale (``vmax`` at the top)."""

    left: int
    top: int
    width: int
    height: int
    scale: ColourScale

    def pixel_of_value(self, value: float) -> tuple[float, float]:
        """Where ``value`` lies on the bar: ``(x, y)`` canvas pixels, ``x`` the bar's middle."""
        fraction = (value - self.scale.vmin) / (self.scale.vmax - self.scale.vmin)
        return self.left + self.width / 2, self.top + (1.0 - fraction) * self.height


@dataclass
class DrawnFigure:
    """A figure built but not written: the matplotlib ``figure``, its ``info``, its ``panels`` by name
    (``"peak/axial"``, ``"region/coronal"``, ``"mip/sagittal"``, ``"zoom/peak"``, ``"<method>/axial"``...) and
    its colour ``bars`` by row (``"peak"``, ``"region"``, ``"mip"``, ``"<method>"``)."""

    figure: Figure
    info: FigureInfo | None = None  # set once the figure is complete
    panels: dict[str, Panel] = field(default_factory=dict)
    bars: dict[str, ColourBar] = field(default_factory=dict)

    def rgb(self) -> np.ndarray:
        """The rendered canvas as an ``(height, width, 3)`` uint8 array."""
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()

    def save(self, path: str | Path, thumbnail: str | Path | None = None) -> FigureInfo:
        """Write the PNG to exactly ``path`` (whatever its suffix) and return the info with its path;
        with ``thumbnail``, also the first plane through the peak (axial, or the 2D image) alone,
        at most :data:`THUMBNAIL_PX` wide, to that path (drawn once for both)."""
        rgb = self.rgb()
        Image.fromarray(rgb).save(str(path), format="PNG", compress_level=PNG_COMPRESSION)
        self.info.path = str(path)
        if thumbnail is not None:
            panel = next((self.panels[k] for k in THUMBNAIL_PANELS if k in self.panels), None)
            left, top, right, bottom = panel.box() if panel is not None else (0, 0, rgb.shape[1], rgb.shape[0])
            small = Image.fromarray(rgb[top:bottom, left:right])
            small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
            small.save(str(thumbnail), format="PNG", compress_level=PNG_COMPRESSION)
        return self.info


def panel_rgb(grey: np.ndarray, window: tuple[float, float], values: np.ndarray | None, scale: ColourScale | None,
              plane: str, point: Sequence[int]) -> np.ndarray:
    """The image (``(rows, cols, 3)``, floats in [0, 1]) of ``plane`` through the display voxel ``point``: the
    display-oriented ``grey`` scan under ``window`` with the map ``values`` blended on top (:meth:`ColourScale.rgba`).

    Example:
        >>> grey, values = np.zeros((4, 4, 4)), np.zeros((4, 4, 4)); values[0, 1, 2] = 1.0
        >>> image = panel_rgb(grey, (0.0, 1.0), values, colour_scale(values), "axial", (0, 1, 2))
        >>> image.shape, [int(v) for v in np.unravel_index(image.sum(axis=-1).argmax(), image.shape[:2])]
        ((4, 4, 3), [2, 3])
    """
    return _blend(plane_image(grey, plane, point), window,
                  None if values is None else plane_image(values, plane, point), scale)


def _blend(grey: np.ndarray, window: tuple[float, float], values: np.ndarray | None,
           scale: ColourScale | None) -> np.ndarray:
    low, high = window
    shade = np.clip((grey.astype(np.float32) - low) / (high - low), 0.0, 1.0)[..., None]
    rgb = np.repeat(shade, 3, axis=-1)
    if values is None or scale is None:
        return rgb
    colours = scale.rgba(values).astype(np.float32)
    alpha = colours[..., 3:]
    return rgb * (1.0 - alpha) + colours[..., :3] * alpha


# ----------------------------------------------------------------------------------------------- data


@dataclass
class _Map:
    """A map on the scan's display grid, with what its figure needs."""

    label: str
    values: np.ndarray  # display orientation, non-finite set to 0
    scale: ColourScale
    peak: tuple[int, ...] | None  # display index
    peak_value: float
    notes: list[str]


@functools.lru_cache(maxsize=1)
def _cached_volume(path: str, stamp: tuple[int, int]) -> Volume:
    return load_volume(path)


def _volume(path: str | Path) -> Volume:
    """The scan, read once for the several figures of one image."""
    try:
        status = os.stat(path)
    except OSError:
        return load_volume(path)  # says what is wrong
    return _cached_volume(str(Path(path).resolve()), (status.st_mtime_ns, status.st_size))


class _Scene:
    """The scan, its grey window and the optional prediction, shared by all panels of a figure."""

    def __init__(self, scan: str | Path, prediction: str | Path | None, label_names: Mapping[int, str] | None):
        self.scan = _volume(scan)
        grey = self.scan.data.astype(np.float32, copy=False)
        sample = grey[tuple(slice(None, None, 2) for _ in grey.shape)] if grey.size > 2_000_000 else grey
        sample = sample[np.isfinite(sample)]
        low, high = (float(v) for v in np.percentile(sample, GREY_PERCENTILES)) if sample.size else (0.0, 1.0)
        if high <= low and sample.size:
            low, high = float(sample.min()), float(sample.max())
        self.window = (low, high if high > low else low + 1.0)
        self.grey = np.nan_to_num(grey, nan=low, posinf=high, neginf=low)
        self.prediction = None if prediction is None else self.scan.same_grid(prediction, "prediction")
        present = [] if self.prediction is None else [int(v) for v in np.unique(self.prediction) if v != 0]
        self.many_labels = len(present) > len(OUTLINE_COLOURS)
        self.labels = present[: len(OUTLINE_COLOURS)]  # the outlined labels, each in its own colour
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}

    def load_map(self, path: str | Path, label: str | None = None) -> _Map:
        values = np.asarray(self.scan.same_grid(path, "map"), np.float32)
        notes = []
        finite = np.isfinite(values)
        if not finite.all():
            notes.append(f"{int((~finite).sum())} non-finite voxels ignored")
            values = np.where(finite, values, np.float32(0))
        scale = colour_scale(values)
        if scale.rule == "all zero":
            notes.append("the map is all zero")
            return _Map(label or _stem(path), values, scale, None, 0.0, notes)
        peak = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(values))), values.shape))
        return _Map(label or _stem(path), values, scale, peak, float(values[peak]), notes)

    def centre(self) -> tuple[int, ...]:
        return tuple(n // 2 for n in self.scan.data.shape)

    def region_centre(self, label: int) -> tuple[int, ...] | None:
        """The voxel of the region ``prediction == label`` nearest its centre of mass (display index)."""
        voxels = np.argwhere(self.prediction == label)
        if voxels.size == 0:
            return None
        distance = (((voxels - voxels.mean(axis=0)) * np.asarray(self.scan.spacing)) ** 2).sum(axis=1)
        return tuple(int(v) for v in voxels[int(np.argmin(distance))])

    def region(self, region_label: int | None, notes: list[str]) -> tuple[int, ...] | None:
        if region_label is None:
            return None
        if self.prediction is None:
            notes.append(f"region {region_label} not drawn: no prediction given")
            return None
        centre = self.region_centre(int(region_label))
        if centre is None:
            notes.append(f"{self.label_name(int(region_label))} is absent from the prediction")
        elif self.many_labels:  # too many outlines to tell apart: the target's alone
            self.labels = [int(region_label)]
        return centre

    def label_name(self, label: int) -> str:
        return self.label_names.get(label, f"label {label}")

    def outline_note(self) -> str:
        if not self.labels:
            return ""
        names = ", ".join(f"{self.label_name(label)} ({OUTLINE_COLOURS[i % len(OUTLINE_COLOURS)][0]})"
                          for i, label in enumerate(self.labels))
        return f"outline: predicted {names}"

    def voxel_text(self, point: Sequence[int]) -> str:
        return "voxel (" + ", ".join(map(str, self.scan.to_source(point))) + ")"

    def world_text(self, point: Sequence[int]) -> str:
        index = np.zeros(4)
        index[: self.scan.ndim] = self.scan.to_source(point)
        index[3] = 1.0
        x, y, z = (self.scan.affine @ index)[:3]
        return f"RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm" if self.scan.orientation_known else ""


# ----------------------------------------------------------------------------------------------- sheet


class _Mosaic(Artist):
    """The composed picture of all panels, copied to the canvas as it is (no resampling)."""

    def __init__(self, pixels: np.ndarray):
        super().__init__()
        self.pixels = pixels

    def draw(self, renderer) -> None:
        rgba = np.empty(self.pixels.shape[:2] + (4,), np.uint8)
        rgba[..., :3] = self.pixels[::-1]  # the renderer's row 0 is the bottom
        rgba[..., 3] = 255
        gc = renderer.new_gc()
        renderer.draw_image(gc, 0, 0, rgba)
        gc.restore()


class _Sheet:
    """A figure drawn in canvas pixels from the top-left: one mosaic of panels, and text and lines on top."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.pixels = np.full((self.height, self.width, 3), 255, np.uint8)
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.figure.add_artist(_Mosaic(self.pixels))
        self.transform = Affine2D().scale(1.0, -1.0).translate(0.0, self.height)

    def paste(self, rgb: np.ndarray, left: int, top: int) -> None:
        height, width = rgb.shape[:2]
        self.pixels[top: top + height, left: left + width] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def text(self, x: float, y: float, text: str, **style) -> None:
        self.figure.text(x, y, text, transform=self.transform, **style)

    def lines(self, segments: Sequence[np.ndarray], colours, width: float, clip: tuple[int, int, int, int] | None = None,
              **style) -> None:
        if not len(segments):
            return
        collection = LineCollection(segments, colors=colours, linewidths=width, transform=self.transform, **style)
        if clip is not None:
            left, top, right, bottom = clip
            collection.set_clip_box(Bbox.from_extents(left, self.height - bottom, right, self.height - top))
        self.figure.add_artist(collection)

    def rectangle(self, left: float, top: float, width: float, height: float, **style) -> None:
        self.figure.add_artist(Rectangle((left, top), width, height, transform=self.transform, fill=False, **style))


def _font_px(style: Mapping) -> float:
    return float(style.get("fontsize", 10)) * DPI / 72.0


def _wrap(text: str, width_px: float, style: Mapping) -> list[str]:
    """``text`` in lines that fit ``width_px`` (paragraphs kept)."""
    chars = max(8, int(width_px / (_CHAR_WIDTH * _font_px(style))))
    return [line for paragraph in text.split("\n") for line in (textwrap.wrap(paragraph, chars) or [""])]


def _text_height(lines: int, style: Mapping) -> int:
    return int(np.ceil(lines * _LINE_HEIGHT * _font_px(style)))


# ----------------------------------------------------------------------------------------------- layout


@dataclass
class _Row:
    """One row of cells: their physical sizes (mm, width × height) drawn at the sheet's common scale."""

    cells: list[tuple[float, float]]
    titled: bool = True
    # filled by _layout: each cell's box (left, top, width, height) in pixels, and the row's box
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    top: int = 0
    height: int = 0


def _layout(rows: list[_Row], header_px: int, width_px: int) -> tuple[int, int]:
    """Place the cells of ``rows`` below a header of ``header_px``; the sheet's (width, height)."""
    columns = max(len(row.cells) for row in rows)
    content_mm = max(sum(w for w, _ in row.cells) for row in rows)
    fixed_height = header_px + _BOTTOM + sum(_ROW_GAP + (_TITLE_STRIP if row.titled else 0) for row in rows)
    rows_mm = sum(max(h for _, h in row.cells) for row in rows)
    by_width = (width_px - _LEFT - _RIGHT - _GAP * (columns - 1)) / content_mm
    scale = min(by_width, max(MAX_HEIGHT_PX - fixed_height, 200) / rows_mm)  # tall volumes: narrower page
    y = header_px
    for row in rows:
        y += _ROW_GAP + (_TITLE_STRIP if row.titled else 0)
        row.top, row.height = y, int(round(max(h for _, h in row.cells) * scale))
        x = _LEFT
        row.boxes = []
        for w, _ in row.cells:
            row.boxes.append((x, y, int(round(w * scale)), row.height))
            x += int(round(w * scale)) + _GAP
        y += row.height
    if scale == by_width:
        return width_px, y + _BOTTOM
    return max(row.boxes[-1][0] + row.boxes[-1][2] for row in rows) + _RIGHT, y + _BOTTOM


def _panel_mm(volume: Volume, plane: str, crop: tuple[int, int, int, int] | None = None) -> tuple[float, float]:
    """A panel's physical (width, height) in mm (of the crop ``(row0, row1, col0, col1)`` when given)."""
    if crop is None:
        rows, cols = plane_image(volume.data, plane, (0,) * volume.ndim).shape
    else:
        rows, cols = crop[1] - crop[0], crop[3] - crop[2]
    row_mm, col_mm = plane_spacing(plane, volume.spacing)
    return cols * col_mm, rows * row_mm


def _zoom_crop(volume: Volume, plane: str, point: Sequence[int]) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of a ZOOM_MM box around ``point`` in the plane's image, within the image."""
    rows, cols = plane_image(volume.data, plane, point).shape
    row, col = plane_pixel(plane, point, volume.data.shape)
    row_mm, col_mm = plane_spacing(plane, volume.spacing)
    row0, row1 = _window_around(row, max(4, round(ZOOM_MM / row_mm)), rows)
    col0, col1 = _window_around(col, max(4, round(ZOOM_MM / col_mm)), cols)
    return row0, row1, col0, col1


def _window_around(centre: int, size: int, length: int) -> tuple[int, int]:
    """``[start, stop)`` of ``size`` pixels around ``centre``, shifted to lie within ``[0, length)``."""
    size = min(size, length)
    start = min(max(centre - size // 2, 0), length - size)
    return start, start + size


def _zoom_cell(volume: Volume, planes: Sequence[str]) -> tuple[float, float]:
    """A square cell for a zoom: as tall as the row, at most 1.25 times its widest panel."""
    sizes = [_panel_mm(volume, plane) for plane in planes]
    side = min(max(h for _, h in sizes), 1.25 * max(w for w, _ in sizes))
    return side, side


# ----------------------------------------------------------------------------------------------- drawing


def _draw_panel(sheet: _Sheet, scene: _Scene, rgb: np.ndarray, plane: str, point: tuple[int, ...] | None,
                box: tuple[int, int, int, int], crop: tuple[int, int, int, int] | None = None,
                outline: bool = True) -> Panel:
    """Paste the plane image ``rgb`` (or its ``crop``) into ``box`` at its physical aspect, centred; add the
    outline, the crosshair ticks at ``point`` and the orientation letters."""
    volume = scene.scan
    row0, row1, col0, col1 = crop or (0, rgb.shape[0], 0, rgb.shape[1])
    width_mm, height_mm = _panel_mm(volume, plane, (row0, row1, col0, col1))
    left, top, box_width, box_height = box
    scale = min(box_width / width_mm, box_height / height_mm)
    width, height = max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale)))
    left, top = left + (box_width - width) // 2, top + (box_height - height) // 2
    rows = row0 + (np.arange(height) + 0.5) * (row1 - row0) / height
    cols = col0 + (np.arange(width) + 0.5) * (col1 - col0) / width
    sheet.paste(rgb[rows.astype(int)][:, cols.astype(int)], left, top)
    panel = Panel(plane, tuple(point) if point is not None else (), volume.data.shape, left, top, width, height,
                  row0, col0, row1 - row0, col1 - col0)
    if outline and scene.prediction is not None and point is not None:
        _outline(sheet, panel, plane_image(scene.prediction, plane, point), scene.labels)
    if point is not None:
        _crosshair(sheet, panel, *plane_pixel(plane, point, volume.data.shape))
    if volume.orientation_known:
        _letters(sheet, panel, plane_letters(plane, volume.world_axes))
    return panel


def _outline(sheet: _Sheet, panel: Panel, labels: np.ndarray, values: Sequence[int]) -> None:
    from skimage.measure import find_contours

    segments, colours = [], []
    for i, label in enumerate(values):
        mask = labels == label
        if not mask.any():
            continue
        for contour in find_contours(np.pad(mask, 1).astype(np.float32), 0.5):
            x, y = panel.pixel_of_image(contour[:, 0] - 1, contour[:, 1] - 1)
            segments.append(np.column_stack([x, y]))
            colours.append(OUTLINE_COLOURS[i % len(OUTLINE_COLOURS)][1])
    sheet.lines(segments, colours, 1.0, clip=panel.box(), alpha=0.9)


def _crosshair(sheet: _Sheet, panel: Panel, row: int, col: int) -> None:
    """Short white ticks on the panel's edges pointing at ``(row, col)``, leaving the voxel itself visible."""
    x, y = panel.pixel_of_image(row, col)
    left, top, right, bottom = panel.box()
    length = max(6.0, 0.05 * min(panel.width, panel.height))
    segments = []
    if left <= x <= right:
        segments += [[(x, top), (x, top + length)], [(x, bottom - length), (x, bottom)]]
    if top <= y <= bottom:
        segments += [[(left, y), (left + length, y)], [(right - length, y), (right, y)]]
    sheet.lines(segments, "white", 1.5, alpha=0.9)


def _letters(sheet: _Sheet, panel: Panel, letters: tuple[str, str, str, str]) -> None:
    left_letter, right_letter, top_letter, bottom_letter = letters
    left, top, right, bottom = panel.box()
    middle_x, middle_y, pad = (left + right) / 2, (top + bottom) / 2, 4
    for text, x, y, ha, va in ((left_letter, left + pad, middle_y, "left", "center"),
                               (right_letter, right - pad, middle_y, "right", "center"),
                               (top_letter, middle_x, top + pad, "center", "top"),
                               (bottom_letter, middle_x, bottom - pad, "center", "bottom")):
        sheet.text(x, y, text, ha=ha, va=va, **_LETTER_STYLE)


def _mark_zoom(sheet: _Sheet, full: Panel, crop: tuple[int, int, int, int]) -> None:
    """The zoom's box, dashed, on the full view."""
    row0, row1, col0, col1 = crop
    x0, y0 = full.pixel_of_image(row0 - 0.5, col0 - 0.5)
    x1, y1 = full.pixel_of_image(row1 - 0.5, col1 - 0.5)
    sheet.rectangle(x0, y0, x1 - x0, y1 - y0, edgecolor="white", linewidth=1.3, linestyle=(0, (4, 3)))


def _panel_title(sheet: _Sheet, panel: Panel | tuple[int, int, int, int], text: str) -> None:
    left, top, width = (panel.left, panel.top, panel.width) if isinstance(panel, Panel) else panel[:3]
    sheet.text(left + width / 2, top - 6, text, ha="center", va="bottom", **_TEXT)


def _row_label(sheet: _Sheet, row: _Row, text: str, **style) -> None:
    lines = _wrap(text, row.height, _TEXT)
    x = 6 + _text_height(len(lines), _TEXT) / 2
    sheet.text(x, row.top + row.height / 2, "\n".join(lines), rotation=90, ha="center", va="center",
               multialignment="center", **_TEXT, **style)


def _colour_bar(sheet: _Sheet, row: _Row, right_of: int, scale: ColourScale, name: str) -> ColourBar:
    """A vertical colour bar beside the row: the colour map from ``vmin`` (bottom) to ``vmax`` (top), its ticks
    and a label saying what is shown and where it is clipped."""
    left, top, height = right_of + _BAR_GAP, row.top + 4, row.height - 8
    fractions = 1.0 - (np.arange(height) + 0.5) / height
    colours = colormaps[scale.cmap](fractions)[:, :3]
    sheet.paste(np.repeat(colours[:, None, :], _BAR_WIDTH, axis=1), left, top)
    sheet.rectangle(left, top, _BAR_WIDTH, height, edgecolor="black", linewidth=0.8)
    locator = MaxNLocator(nbins=6, symmetric=scale.signed)
    span = scale.vmax - scale.vmin
    ticks = [t for t in locator.tick_values(scale.vmin, scale.vmax) if -1e-9 * span <= t - scale.vmin <= span * (1 + 1e-9)]
    labels = [f"{t:.3g}" if abs(t) > 1e-12 * span else "0" for t in ticks]
    segments = []
    for tick, label in zip(ticks, labels):
        y = top + (1.0 - (tick - scale.vmin) / span) * height
        segments.append([(left + _BAR_WIDTH, y), (left + _BAR_WIDTH + 5, y)])
        sheet.text(left + _BAR_WIDTH + 8, y, label, ha="left", va="center", **_SMALL)
    sheet.lines(segments, "black", 1.0)
    widest = max((len(label) for label in labels), default=1) * _CHAR_WIDTH * _font_px(_SMALL)
    text = _wrap(f"{name}\n({scale.describe()})", height, _SMALL)
    x = left + _BAR_WIDTH + 8 + widest + 8 + _text_height(len(text), _SMALL) / 2
    sheet.text(x, top + height / 2, "\n".join(text), rotation=90, ha="center", va="center", multialignment="center",
               **_SMALL)
    return ColourBar(left, top, _BAR_WIDTH, height, scale)


def _header(sheet: _Sheet, headline: str, details: list[str]) -> None:
    lines = _header_lines(sheet.width, headline, details)
    sheet.text(sheet.width / 2, 8, "\n".join(lines[0]), ha="center", va="top", fontsize=15, fontweight="bold",
               multialignment="center")
    if lines[1]:
        sheet.text(sheet.width / 2, 8 + _text_height(len(lines[0]), {"fontsize": 15}), "\n".join(lines[1]),
                   ha="center", va="top", multialignment="center", **_TEXT)


def _header_lines(width: int, headline: str, details: list[str]) -> tuple[list[str], list[str]]:
    text = " · ".join(d for d in details if d)
    return _wrap(headline, width - 40, {"fontsize": 15}), (_wrap(text, width - 40, _TEXT) if text else [])


def _header_height(width: int, headline: str, details: list[str]) -> int:
    head, rest = _header_lines(width, headline, details)
    return 10 + _text_height(len(head), {"fontsize": 15}) + _text_height(len(rest), _TEXT)


def _notes_cell(sheet: _Sheet, box: tuple[int, int, int, int], lines: Sequence[str]) -> None:
    left, top, width, height = box
    wrapped = [w for line in lines if line for w in _wrap(line, width - 12, _SMALL)]
    sheet.text(left + 6, top + 6, "\n".join(wrapped), ha="left", va="top", linespacing=1.4, **_SMALL)


# ----------------------------------------------------------------------------------------------- figures


def map_figure(scan: str | Path, map_path: str | Path, *, prediction: str | Path | None = None,
               region_label: int | None = None, title: str = "", classification: dict | None = None,
               label: str | None = None, label_names: Mapping[int, str] | None = None,
               width_px: int = WIDTH_PX) -> DrawnFigure:
    """The figure of one map, built but not written (see :func:`render_map_figure`)."""
    scene = _Scene(scan, prediction, label_names)
    shown = scene.load_map(map_path, label)
    notes = list(shown.notes)
    volume = scene.scan
    peak = shown.peak or scene.centre()
    region = scene.region(region_label, notes)
    planes = volume.planes
    headline = _headline(title, shown.label, classification)
    peak_text = (f"peak {shown.peak_value:.3g} at {scene.voxel_text(peak)}" if shown.peak is not None else "")
    details = [peak_text, scene.outline_note(), *notes]
    header = _header_height(width_px, headline, details)
    zoom = _zoom_cell(volume, planes)
    if volume.ndim == 3:
        overlay_cells = [_panel_mm(volume, plane) for plane in planes] + [zoom]
        rows = {"peak": _Row(overlay_cells)}
        if region is not None:
            rows["region"] = _Row(list(overlay_cells))
        rows["mip"] = _Row(list(overlay_cells))
    else:
        rows = {"peak": _Row([_panel_mm(volume, IMAGE_PLANE), zoom] + ([zoom] if region is not None else []))}
    width, height = _layout(list(rows.values()), header, width_px)
    sheet = _Sheet(width, height)
    drawn = DrawnFigure(sheet.figure)
    region_name = scene.label_name(int(region_label)) if region is not None else ""
    if volume.ndim == 3:
        through = "through the peak" if shown.peak is not None else "through the centre (no peak)"
        _overlay_row(sheet, scene, shown, rows["peak"], peak, "peak", drawn, zoom=True,
                     heading=f"{through}\n{scene.voxel_text(peak)}")
        if region is not None:
            _overlay_row(sheet, scene, shown, rows["region"], region, "region", drawn, zoom=True,
                         heading=f"through the centre of {region_name}\n{scene.voxel_text(region)}")
        _projection_row(sheet, scene, shown, rows["mip"], drawn, _summary(scene, shown, region, region_label))
    else:
        _image_row(sheet, scene, shown, rows["peak"], peak, region, region_name, drawn)
    _header(sheet, headline, details)
    drawn.info = FigureInfo(
        path="", width_px=width, height_px=height, planes=planes, rows=tuple(rows),
        peak_index=None if shown.peak is None else volume.to_source(shown.peak), peak_value=shown.peak_value,
        point_index=volume.to_source(peak), region_index=None if region is None else volume.to_source(region),
        scales=(shown.scale,), notes=tuple(notes),
    )
    return drawn


def comparison_figure(scan: str | Path, maps: Sequence[tuple[str, str | Path]], *, prediction: str | Path | None = None,
                      region_label: int | None = None, title: str = "",
                      label_names: Mapping[int, str] | None = None, width_px: int = WIDTH_PX) -> DrawnFigure:
    """The comparison grid of several maps, built but not written (see :func:`render_comparison`)."""
    if not maps:
        raise ValueError("a comparison needs at least one (label, map) pair")
    scene = _Scene(scan, prediction, label_names)
    loaded = [scene.load_map(path, label) for label, path in maps]
    notes = [f"{m.label}: {note}" for m in loaded for note in m.notes]
    volume = scene.scan
    region = scene.region(region_label, notes)
    point = region if region is not None else (loaded[0].peak or scene.centre())
    where = (f"the centre of {scene.label_name(int(region_label))}" if region is not None
             else f"the peak of {loaded[0].label}")
    details = [f"planes through {where}, {scene.voxel_text(point)}", scene.outline_note(), *notes]
    headline = title or "comparison of methods"
    header = _header_height(width_px, headline, details)
    cells = [_panel_mm(volume, plane) for plane in volume.planes]
    if volume.ndim == 2:
        cells.append(_zoom_cell(volume, volume.planes))
    rows = [_Row(list(cells), titled=i == 0) for i in range(len(loaded))]
    width, height = _layout(rows, header, width_px)
    sheet = _Sheet(width, height)
    drawn = DrawnFigure(sheet.figure)
    for i, (row, shown) in enumerate(zip(rows, loaded)):
        _overlay_row(sheet, scene, shown, row, point, shown.label, drawn, zoom=volume.ndim == 2,
                     heading=shown.label, titles=i == 0, bold=True)
    _header(sheet, headline, details)
    first = loaded[0]
    drawn.info = FigureInfo(
        path="", width_px=width, height_px=height, planes=volume.planes, rows=tuple(m.label for m in loaded),
        peak_index=None if first.peak is None else volume.to_source(first.peak), peak_value=first.peak_value,
        point_index=volume.to_source(point), region_index=None if region is None else volume.to_source(region),
        scales=tuple(m.scale for m in loaded), notes=tuple(notes),
    )
    return drawn


def render_map_figure(scan: str | Path, map_path: str | Path, path: str | Path, *, prediction: str | Path | None = None,
                      region_label: int | None = None, title: str = "", classification: dict | None = None,
                      label: str | None = None, label_names: Mapping[int, str] | None = None,
                      width_px: int = WIDTH_PX, thumbnail: str | Path | None = None) -> FigureInfo:
    """Write the overlay figure of one map over its scan to the PNG ``path`` (exactly that name).

    Args:
        scan: the input scan (NIfTI, NRRD, MetaImage, PNG...).
        map_path: the map, on the scan's grid.
        path: where to write the PNG.
        prediction: a label map on the scan's grid; its outline is drawn.
        region_label: the label of the target region (with ``prediction``): a second row through its centre.
        title: the figure's first line; the map's label is added.
        classification: ``{"predicted": 1, "name": "lesion", "score": 2.1, "probability": 0.97}`` (any of them)
            for the title.
        label: the map's name on its colour bar (default: the file name).
        label_names: names of the prediction's labels (``{1: "vessel"}``) for the outline's legend and the rows.
        width_px: the figure's width in pixels (100 dpi).
        thumbnail: also write the first plane alone, small, as a PNG here (for tables of figures).
    """
    started = time.perf_counter()
    drawn = map_figure(scan, map_path, prediction=prediction, region_label=region_label, title=title,
                       classification=classification, label=label, label_names=label_names, width_px=width_px)
    return _finish(drawn, path, started, thumbnail)


def render_comparison(scan: str | Path, maps: Sequence[tuple[str, str | Path]], path: str | Path, *,
                      prediction: str | Path | None = None, region_label: int | None = None, title: str = "",
                      label_names: Mapping[int, str] | None = None, width_px: int = WIDTH_PX) -> FigureInfo:
    """Write the comparison grid of ``maps`` (``(method label, map path)`` pairs) to the PNG ``path``: one row
    per map with its own colour bar, the planes through one point (the region's centre when given, else the
    first map's peak) over one shared grey scan."""
    started = time.perf_counter()
    drawn = comparison_figure(scan, maps, prediction=prediction, region_label=region_label, title=title,
                              label_names=label_names, width_px=width_px)
    return _finish(drawn, path, started)


def _finish(drawn: DrawnFigure, path: str | Path, started: float, thumbnail: str | Path | None = None) -> FigureInfo:
    info = drawn.save(path, thumbnail)
    info.seconds = round(time.perf_counter() - started, 3)
    return info


def _overlay_row(sheet: _Sheet, scene: _Scene, shown: _Map, row: _Row, point: tuple[int, ...], name: str,
                 drawn: DrawnFigure, *, zoom: bool, heading: str, titles: bool = True, bold: bool = False) -> None:
    volume = scene.scan
    for plane, box in zip(volume.planes, row.boxes):
        rgb = panel_rgb(scene.grey, scene.window, shown.values, shown.scale, plane, point)
        panel = drawn.panels[f"{name}/{plane}"] = _draw_panel(sheet, scene, rgb, plane, point, box)
        if titles:
            _panel_title(sheet, panel, plane)
        if zoom and plane == volume.planes[0]:
            crop = _zoom_crop(volume, plane, point)
            zoomed = drawn.panels[f"zoom/{name}"] = _draw_panel(sheet, scene, rgb, plane, point, row.boxes[-1], crop)
            _mark_zoom(sheet, panel, crop)
            if titles:
                _panel_title(sheet, zoomed, _zoom_title(volume, plane, crop))
    _row_label(sheet, row, heading, **({"fontweight": "bold"} if bold else {}))
    last = row.boxes[-1]
    drawn.bars[name] = _colour_bar(sheet, row, last[0] + last[2], shown.scale, shown.label)


def _projection_row(sheet: _Sheet, scene: _Scene, shown: _Map, row: _Row, drawn: DrawnFigure,
                    summary: list[str]) -> None:
    volume = scene.scan
    magnitude = np.abs(shown.values)
    projections = [plane_projection(magnitude, plane) for plane in volume.planes]
    scale = colour_scale(np.concatenate([p.ravel() for p in projections]), signed=False, of="the MIPs")
    greys = [plane_projection(scene.grey, plane) for plane in volume.planes]
    low, high = (float(v) for v in np.percentile(np.concatenate([g.ravel() for g in greys]), GREY_PERCENTILES))
    window = (low, high) if high > low else scene.window  # the projections' own contrast
    for plane, grey, projection, box in zip(volume.planes, greys, projections, row.boxes):
        rgb = _blend(grey, window, projection, scale)
        panel = drawn.panels[f"mip/{plane}"] = _draw_panel(sheet, scene, rgb, plane, None, box)
        _panel_title(sheet, panel, f"MIP {plane}")
    _notes_cell(sheet, row.boxes[-1], summary)
    _row_label(sheet, row, "maximum-intensity projections")
    last = row.boxes[-1]
    drawn.bars["mip"] = _colour_bar(sheet, row, last[0] + last[2], scale, f"|{shown.label}|, MIP")


def _image_row(sheet: _Sheet, scene: _Scene, shown: _Map, row: _Row, peak: tuple[int, ...],
               region: tuple[int, ...] | None, region_name: str, drawn: DrawnFigure) -> None:
    volume = scene.scan
    rgb = panel_rgb(scene.grey, scene.window, shown.values, shown.scale, IMAGE_PLANE, peak)
    full = drawn.panels[f"peak/{IMAGE_PLANE}"] = _draw_panel(sheet, scene, rgb, IMAGE_PLANE, peak, row.boxes[0])
    _panel_title(sheet, full, "image")
    for (name, point, what), box in zip((("peak", peak, "the peak"), ("region", region, region_name)), row.boxes[1:]):
        crop = _zoom_crop(volume, IMAGE_PLANE, point)
        zoomed = drawn.panels[f"zoom/{name}"] = _draw_panel(sheet, scene, rgb, IMAGE_PLANE, point, box, crop)
        _mark_zoom(sheet, full, crop)
        _panel_title(sheet, zoomed, f"{_zoom_title(volume, IMAGE_PLANE, crop)} on {what}")
    _row_label(sheet, row, f"peak at {scene.voxel_text(peak)}")
    last = row.boxes[-1]
    drawn.bars["peak"] = _colour_bar(sheet, row, last[0] + last[2], shown.scale, shown.label)


def _zoom_title(volume: Volume, plane: str, crop: tuple[int, int, int, int]) -> str:
    width, height = _panel_mm(volume, plane, crop)
    where = "" if plane == IMAGE_PLANE else f" ({plane})"
    unit = "mm" if volume.orientation_known else "px"  # a picture's pixels have no size in the body
    return f"zoom {width:.0f} × {height:.0f} {unit}{where}"


def _summary(scene: _Scene, shown: _Map, region: tuple[int, ...] | None, region_label: int | None) -> list[str]:
    """Numbers for the spare cell of a 3D figure."""
    lines = []
    if shown.peak is not None:
        lines.append(f"peak {shown.peak_value:.3g} at {scene.voxel_text(shown.peak)}")
        lines.append(scene.world_text(shown.peak))
    scale = shown.scale
    if scale.rule != "all zero":
        lines.append(f"colour range {scale.vmin:.3g} … {scale.vmax:.3g} ({scale.cmap}): "
                     f"{'±' if scale.signed else ''}{scale.rule} of |map| over its non-zero voxels")
        if shown.peak is not None and abs(shown.peak_value) > scale.vmax:
            lines.append(f"|peak| is {abs(shown.peak_value) / scale.vmax:.1f}× the range's end (clipped)")
    if region is not None and region_label is not None:
        magnitude = np.abs(shown.values)
        total = float(magnitude.sum())
        inside = float(magnitude[scene.prediction == int(region_label)].sum())
        share = inside / total if total > 0 else 0.0
        fraction = float((scene.prediction == int(region_label)).mean())
        lines.append(f"{share:.0%} of |map| inside {scene.label_name(int(region_label))} "
                     f"({fraction:.1%} of the volume)")
    return lines


def _headline(title: str, label: str, classification: dict | None) -> str:
    parts = [title or label]
    if title and label not in title:
        parts.append(label)
    if classification:
        parts.append(_classification_text(classification))
    return " — ".join(parts)


def _classification_text(classification: dict) -> str:
    """``predicted lesion (class 1): score 5.13, p > 0.999``; when the explained class (``target``)
    is another one, what the network predicted and then the explained class's score."""
    predicted, name, target = classification.get("predicted"), classification.get("name"), classification.get("target")
    scores = ""
    if classification.get("score") is not None:
        scores += f"score {float(classification['score']):.3g}"
    if classification.get("probability") is not None:
        scores += f"{', ' if scores else ''}p {_probability(float(classification['probability']))}"
    if target is not None and predicted is not None and target != predicted:
        other = classification.get("predicted_name")
        text = f"predicted {other} (class {predicted})" if other else f"predicted class {predicted}"
        return f"{text} · explained {name} (class {target})" + (f": {scores}" if scores else "")
    text = "predicted " + (f"{name} (class {predicted})" if name is not None and predicted is not None
                           else str(name if name is not None else predicted))
    return text + (f": {scores}" if scores else "")


def _probability(value: float) -> str:
    """``"= 0.973"``, or ``"> 0.999"`` / ``"< 0.001"`` where three decimals would round to 1 or 0."""
    if value >= 0.9995:
        return "> 0.999"
    if value < 0.0005:
        return "< 0.001"
    return f"= {value:.3f}"


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
