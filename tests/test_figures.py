"""Figures of maps over their scan: the pictures are checked pixel by pixel on small synthetic volumes."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib import colormaps

from esegeta_monai.errors import InputError
from esegeta_monai.report.display import PLANES, load_volume
from esegeta_monai.report.figures import (
    _classification_text, colour_scale, comparison_figure, map_figure, panel_rgb, render_comparison, render_map_figure,
)

SATURATED = 60  # max - min of a pixel's RGB: the grey scan has 0, the overlay colours far more


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _lps(spacing=(1.0, 1.2, 1.5), origin=(12.0, -7.0, 3.0)) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def _grey(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1).astype(int) - rgb.min(axis=-1).astype(int)


def _coloured(rgb: np.ndarray, box, threshold: int = SATURATED) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) canvas coordinates of the saturated (overlay-coloured) pixels inside ``box``."""
    left, top, right, bottom = box
    ys, xs = np.nonzero(_saturation(rgb[top:bottom, left:right]) > threshold)
    return xs + left, ys + top


def _centroid(rgb, panel, threshold: int = SATURATED) -> tuple[float, float]:
    xs, ys = _coloured(rgb, panel.box(), threshold)
    assert xs.size, "no coloured pixel in the panel"
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5  # pixel centres


def _single_peak(tmp_path, shape, affine, voxel, value=3.0, name="map.nii.gz") -> Path:
    values = np.zeros(shape, np.float32)
    values[voxel] = value
    return _save(tmp_path / name, values, affine)


# --------------------------------------------------------------------------------------------- display


@pytest.mark.parametrize("codes", ["LPS", "RAS", "PIR", "SLA", "ILP"])
def test_display_index_round_trip_follows_the_reoriented_array(tmp_path, codes):
    from nibabel import orientations

    shape = (5, 6, 7)
    ornt = orientations.axcodes2ornt(tuple(codes))
    affine = orientations.inv_ornt_aff(ornt, shape)  # an affine that stores RAS as ``codes``
    affine = np.linalg.inv(affine)
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    scan = load_volume(_save(tmp_path / "scan.nii.gz", array, affine))
    assert scan.axcodes == tuple(codes)
    assert scan.data.shape == tuple(shape[int(np.flatnonzero(ornt[:, 0] == axis)[0])] for axis in range(3))
    for index in itertools.product(*(range(n) for n in shape)):
        display = scan.to_display(index)
        assert scan.data[display] == array[index]
        assert scan.to_source(display) == index
    # in display space index i grows towards R, j towards A, k towards S
    world = lambda display: (affine @ np.array([*scan.to_source(display), 1.0]))[:3]  # noqa: E731
    for axis in range(3):
        step = np.zeros(3, int)
        step[axis] = 1
        assert (world(tuple(step)) - world((0, 0, 0)))[axis] > 0


def test_nrrd_is_displayed_as_the_same_scan_stored_as_nifti(tmp_path):
    import SimpleITK as sitk

    array = _grey((8, 9, 5))
    nifti = load_volume(_save(tmp_path / "scan.nii.gz", array, _lps((0.8, 0.9, 2.0), (0.0, 0.0, 0.0))))
    image = sitk.GetImageFromArray(array.T.copy())  # (z, y, x) -> size (8, 9, 5); identity direction = LPS
    image.SetSpacing((0.8, 0.9, 2.0))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    nrrd = load_volume(tmp_path / "scan.nrrd")
    assert nrrd.spacing == nifti.spacing == (0.8, 0.9, 2.0)
    assert np.array_equal(nrrd.data, nifti.data)
    assert nrrd.axcodes == nifti.axcodes == ("L", "P", "S")


def test_unreadable_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    scan = _save(tmp_path / "scan.nii.gz", _grey((6, 6, 4)), np.eye(4))
    other = _single_peak(tmp_path, (6, 6, 5), np.eye(4), (1, 1, 1))
    with pytest.raises(InputError, match="not on the grid of the scan"):
        map_figure(scan, other)


# --------------------------------------------------------------------------------------------- figures


def test_single_peak_is_drawn_at_its_voxel_in_every_plane(tmp_path):
    shape, voxel = (20, 24, 16), (6, 15, 10)
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), _lps())
    drawn = map_figure(scan, _single_peak(tmp_path, shape, _lps(), voxel))
    assert drawn.info.peak_index == voxel and drawn.info.peak_value == 3.0
    rgb = drawn.rgb()
    assert rgb.shape[:2] == (drawn.info.height_px, drawn.info.width_px) and drawn.info.width_px == 1600
    # stored L, P, S: radiological axial rows run A→P (= j), columns R→L (= i); coronal/sagittal rows S→I
    i, j, k = voxel
    expected = {"axial": (j, i), "coronal": (shape[2] - 1 - k, i), "sagittal": (shape[2] - 1 - k, j)}
    for plane, (row, col) in expected.items():
        panel = drawn.panels[f"peak/{plane}"]
        x, y = _centroid(rgb, panel)
        ex, ey = panel.pixel_of_image(row, col)
        assert abs(x - ex) <= 1.0 and abs(y - ey) <= 1.0, (plane, (x, y), (ex, ey))
        xs, _ = _coloured(rgb, panel.box())
        block = (panel.width / panel.cols) * (panel.height / panel.rows)
        assert xs.size <= 1.3 * block + 4, f"{plane}: colour outside the peak voxel"
    zoom = drawn.panels["zoom/peak"]
    x, y = _centroid(rgb, zoom)
    ex, ey = zoom.pixel_of_image(j, i)
    assert abs(x - ex) <= 1.0 and abs(y - ey) <= 1.0
    full = drawn.panels["peak/axial"]
    assert zoom.width / zoom.cols >= full.width / full.cols  # the zoom magnifies


def test_signed_map_is_centred_on_zero_and_positive_map_starts_at_zero(tmp_path):
    shape = (16, 16, 8)
    scan = _save(tmp_path / "scan.nii.gz", np.full(shape, 5.0, np.float32), np.eye(4))  # constant: black
    rng = np.random.default_rng(3)
    signed = rng.normal(0.0, 1.0, shape).astype(np.float32)
    signed[4, 5, 3], signed[10, 11, 3] = 40.0, -40.0  # far beyond p99.5: both shown at the ends of the range
    drawn = map_figure(scan, _save(tmp_path / "signed.nii.gz", signed, np.eye(4)))
    scale = drawn.info.scales[0]
    assert scale.cmap == "RdBu_r" and scale.vmin == -scale.vmax
    assert scale.vmax == pytest.approx(np.percentile(np.abs(signed[signed != 0]), 99.5), rel=1e-5)  # not min–max
    centre = np.asarray(colormaps["RdBu_r"](0.5)[:3])
    assert np.allclose(scale.rgba(np.zeros(1))[0, :3], centre) and scale.rgba(np.zeros(1))[0, 3] == 0.0
    rgb = drawn.rgb()
    bar = drawn.bars["peak"]
    x, y = bar.pixel_of_value(0.0)
    assert np.abs(rgb[int(y), int(x)] / 255.0 - centre).max() < 0.03  # the bar's zero is the map's centre
    # the peak's axial plane holds both extremes: over a black scan they are 0.9 × the map's end colours
    panel = drawn.panels["peak/axial"]
    for voxel, end in (((4, 5, 3), 1.0), ((10, 11, 3), 0.0)):
        px, py = panel.pixel_of(voxel)
        expected = 0.9 * np.asarray(colormaps["RdBu_r"](end)[:3]) * 255
        assert np.abs(rgb[int(py), int(px)] - expected).max() <= 2

    positive = np.abs(signed)
    drawn = map_figure(scan, _save(tmp_path / "positive.nii.gz", positive, np.eye(4)))
    scale = drawn.info.scales[0]
    assert scale.cmap == "inferno" and scale.vmin == 0.0 and not scale.signed
    assert np.allclose(scale.rgba(np.zeros(1))[0, :3], colormaps["inferno"](0.0)[:3])
    rgb = drawn.rgb()
    bar = drawn.bars["peak"]
    x, y = bar.pixel_of_value(0.0)
    assert np.abs(rgb[int(y) - 3, int(x)] / 255.0 - colormaps["inferno"](0.0)[:3]).max() < 0.03  # inside the frame
    x, y = bar.pixel_of_value(scale.vmax)
    assert np.abs(rgb[int(y) + 3, int(x)] / 255.0 - colormaps["inferno"](1.0)[:3]).max() < 0.03


def test_small_values_are_transparent_and_the_scan_shows_through():
    grey = np.zeros((6, 6, 4))
    grey[:, :, 2] = np.linspace(0, 1, 6)[:, None]
    values = np.zeros((6, 6, 4))
    values[:, :, 2] = np.linspace(0.0, 1.0, 6)[None, :]  # 0 … vmax along j
    scale = colour_scale(values)
    rgb = panel_rgb(grey, (0.0, 1.0), values, scale, "axial", (0, 0, 2))
    plain = panel_rgb(grey, (0.0, 1.0), None, None, "axial", (0, 0, 2))
    difference = np.abs(rgb - plain).max(axis=(1, 2))  # per row (= j from A to P: row 0 is j = 5)
    assert difference[-1] == 0.0  # value 0: the scan only
    assert np.all(np.diff(difference[::-1]) >= 0)  # more colour as |value| grows


def test_anisotropic_voxels_keep_their_physical_aspect(tmp_path):
    shape, spacing = (30, 28, 10), (0.8, 0.8, 5.0)
    affine = np.diag([*spacing, 1.0])
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), affine)
    values = np.zeros(shape, np.float32)
    values[5:15, 12, 3:5] = 1.0  # 10 voxels of 0.8 mm (8 mm) by 2 slices of 5 mm (10 mm) in the coronal plane
    drawn = map_figure(scan, _save(tmp_path / "map.nii.gz", values, affine))
    sizes = {"axial": (shape[0] * 0.8, shape[1] * 0.8), "coronal": (shape[0] * 0.8, shape[2] * 5.0),
             "sagittal": (shape[1] * 0.8, shape[2] * 5.0)}
    for plane, (width_mm, height_mm) in sizes.items():
        panel = drawn.panels[f"peak/{plane}"]
        assert panel.width / panel.height == pytest.approx(width_mm / height_mm, rel=0.02), plane
    rgb = drawn.rgb()
    xs, ys = _coloured(rgb, drawn.panels["peak/coronal"].box())
    blob_width, blob_height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert blob_width / blob_height == pytest.approx(8.0 / 10.0, rel=0.05)


def test_lps_and_ras_storage_of_one_scan_draw_the_same_panels(tmp_path):
    shape = (14, 12, 8)
    lps = _lps((0.9, 1.1, 1.7))
    flip = np.array([[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    ras = lps @ flip
    assert nib.aff2axcodes(ras) == ("R", "A", "S")
    grey = _grey(shape, seed=5)
    values = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[3:7, 2:6, 2:5] = 1
    drawings = []
    for name, affine, turn in (("lps", lps, lambda a: a), ("ras", ras, lambda a: a[::-1, ::-1, :])):
        folder = tmp_path / name
        folder.mkdir()
        drawings.append(map_figure(
            _save(folder / "scan.nii.gz", turn(grey), affine), _save(folder / "map.nii.gz", turn(values), affine),
            prediction=_save(folder / "label.nii.gz", turn(labels), affine), region_label=1,
        ))
    stored_lps, stored_ras = drawings
    i, j, k = stored_lps.info.peak_index
    assert stored_ras.info.peak_index == (shape[0] - 1 - i, shape[1] - 1 - j, k)
    first, second = stored_lps.rgb(), stored_ras.rgb()
    assert stored_lps.panels.keys() == stored_ras.panels.keys()
    for name, panel in stored_lps.panels.items():
        left, top, right, bottom = panel.box()
        assert panel.box() == stored_ras.panels[name].box()
        assert np.array_equal(first[top:bottom, left:right], second[top:bottom, left:right]), name


def test_projection_of_a_blob_is_where_the_blob_is(tmp_path):
    shape, centre = (24, 20, 16), (6, 14, 4)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    values = np.exp(-((grid - centre) ** 2).sum(-1) / (2 * 1.2**2)).astype(np.float32)
    values[values < 1e-3] = 0
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), np.eye(4))
    drawn = map_figure(scan, _save(tmp_path / "map.nii.gz", values, np.eye(4)))
    assert drawn.info.rows == ("peak", "mip")
    rgb = drawn.rgb()
    i, j, k = centre  # stored RAS: rows and columns run from the + to the − end of each axis
    expected = {"axial": (shape[1] - 1 - j, shape[0] - 1 - i), "coronal": (shape[2] - 1 - k, shape[0] - 1 - i),
                "sagittal": (shape[2] - 1 - k, shape[1] - 1 - j)}
    for plane, (row, col) in expected.items():
        panel = drawn.panels[f"mip/{plane}"]
        x, y = _centroid(rgb, panel)
        ex, ey = panel.pixel_of_image(row, col)
        assert abs(x - ex) <= 1.0 and abs(y - ey) <= 1.0, plane
        xs, ys = _coloured(rgb, panel.box())
        reach = 4 * panel.width / panel.cols  # the blob is a few voxels wide
        assert np.all(np.hypot(xs + 0.5 - ex, ys + 0.5 - ey) < reach), plane


def test_2d_image_with_classification_title(tmp_path):
    shape, voxel = (40, 30), (12, 20)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])  # as a PNG converted to NIfTI: stored L, P
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), affine)
    classification = {"predicted": 1, "name": "lesion", "score": 2.1, "probability": 0.97}
    drawn = map_figure(scan, _single_peak(tmp_path, shape, affine, voxel), classification=classification,
                       title="case 7")
    info = drawn.info
    assert info.planes == ("image",) and info.rows == ("peak",) and info.peak_index == voxel
    assert not any(name.startswith("mip/") for name in drawn.panels) and "zoom/peak" in drawn.panels
    texts = [t.get_text() for t in drawn.figure.texts]
    assert any("case 7" in t and "predicted lesion (class 1): score 2.1, p = 0.970" in t for t in texts)
    other = {"predicted": 0, "predicted_name": "absent", "target": 1, "name": "lesion", "score": -3.7, "probability": 0.0004}
    assert _classification_text(other) == "predicted absent (class 0) · explained lesion (class 1): score -3.7, p < 0.001"
    assert {"R", "L", "A", "P"} <= set(texts)
    rgb = drawn.rgb()
    for name in ("peak/image", "zoom/peak"):
        panel = drawn.panels[name]
        x, y = _centroid(rgb, panel)
        ex, ey = panel.pixel_of_image(voxel[1], voxel[0])  # stored L, P: row = y, column = x, as the picture
        assert abs(x - ex) <= 1.0 and abs(y - ey) <= 1.0, name


def test_png_scan_is_drawn_as_the_picture(tmp_path):
    from PIL import Image

    picture = np.full((30, 40), 40, np.uint8)  # rows × columns
    picture[7, 25] = 250
    Image.fromarray(picture).save(tmp_path / "scan.png")
    values = np.zeros((40, 30), np.float32)  # a map of a PNG: (x = column, y = row), identity affine
    values[10, 20] = 1.0
    drawn = map_figure(tmp_path / "scan.png", _save(tmp_path / "map.nii.gz", values, np.eye(4)))
    rgb = drawn.rgb()
    panel = drawn.panels["peak/image"]
    x, y = panel.pixel_of_image(7, 25)
    assert rgb[int(y), int(x)].min() > 200  # the picture's bright pixel, where the picture has it
    x, y = _centroid(rgb, panel)
    ex, ey = panel.pixel_of_image(20, 10)
    assert abs(x - ex) <= 1.0 and abs(y - ey) <= 1.0
    texts = {t.get_text() for t in drawn.figure.texts}
    assert not texts & {"R", "L", "A", "P"}  # a picture has no orientation in the body
    assert any("px" in t for t in texts)


def test_all_zero_map_renders_with_a_note(tmp_path):
    shape = (12, 10, 6)
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), np.eye(4))
    zero = _save(tmp_path / "map.nii.gz", np.zeros(shape, np.float32), np.eye(4))
    path = tmp_path / "figure.png.tmp123"
    info = render_map_figure(scan, zero, path, title="zero")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert info.path == str(path) and info.peak_index is None and "the map is all zero" in info.notes
    drawn = map_figure(scan, zero)
    rgb = drawn.rgb()
    for name, panel in drawn.panels.items():
        assert _coloured(rgb, panel.box())[0].size == 0, name
    assert any("all zero" in t.get_text() for t in drawn.figure.texts)


def test_nan_and_inf_voxels_are_ignored(tmp_path):
    shape = (12, 10, 6)
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), np.eye(4))
    values = np.random.default_rng(2).random(shape).astype(np.float32)
    values[2, 3, 4] = 5.0
    values[0:3, 0:3, 0:2] = np.nan
    values[8, 8, 1], values[9, 1, 1] = np.inf, -np.inf
    info = render_map_figure(scan, _save(tmp_path / "map.nii.gz", values, np.eye(4)), tmp_path / "nan.png")
    assert info.peak_index == (2, 3, 4) and info.peak_value == 5.0
    assert np.isfinite(info.vmax) and 0 < info.vmax <= 5.0
    assert info.notes == ("20 non-finite voxels ignored",)


def test_region_row_goes_through_a_voxel_of_the_region_and_draws_its_outline(tmp_path):
    shape = (20, 20, 10)
    labels = np.zeros(shape, np.uint8)
    labels[2:12, 2:4, 4:6] = 1  # an L: its centre of mass lies outside it
    labels[2:4, 2:12, 4:6] = 1
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), np.eye(4))
    values = np.zeros(shape, np.float32)
    values[15, 15, 8] = 1.0
    drawn = map_figure(scan, _save(tmp_path / "map.nii.gz", values, np.eye(4)),
                       prediction=_save(tmp_path / "label.nii.gz", labels, np.eye(4)), region_label=1,
                       label_names={1: "lesion"})
    info = drawn.info
    assert info.rows == ("peak", "region", "mip")
    region = info.region_index
    voxels = np.argwhere(labels == 1)
    distances = ((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1)
    assert labels[region] == 1 and ((np.asarray(region) - voxels.mean(axis=0)) ** 2).sum() == distances.min()
    rgb = drawn.rgb()
    panel = drawn.panels["region/axial"]
    left, top, right, bottom = panel.box()
    crop = rgb[top:bottom, left:right].astype(int)
    green = (crop[..., 1] > 180) & (crop[..., 0] < 140) & (crop[..., 2] < 140)
    ys, xs = np.nonzero(green)
    assert xs.size > 20
    # the L spans i 2..11 and j 2..11: rows and columns 20-1-11 .. 20-1-2, plus the outline's half voxel
    x0, y0 = panel.pixel_of_image(8 - 1, 8 - 1)
    x1, y1 = panel.pixel_of_image(17 + 1, 17 + 1)
    assert xs.min() + left >= x0 and xs.max() + left <= x1 and ys.min() + top >= y0 and ys.max() + top <= y1
    assert any("lesion (green)" in t.get_text() for t in drawn.figure.texts)


def test_absent_region_is_noted_not_drawn(tmp_path):
    shape = (10, 10, 6)
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), np.eye(4))
    label = _save(tmp_path / "label.nii.gz", np.zeros(shape, np.uint8), np.eye(4))
    info = render_map_figure(scan, _single_peak(tmp_path, shape, np.eye(4), (2, 2, 2)), tmp_path / "f.png",
                             prediction=label, region_label=2)
    assert info.region_index is None and info.rows == ("peak", "mip")
    assert "label 2 is absent from the prediction" in info.notes


def test_comparison_rows_share_one_point_and_keep_their_own_scales(tmp_path):
    shape = (18, 16, 10)
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), _lps())
    labels = np.zeros(shape, np.uint8)
    labels[8:11, 6:9, 4:7] = 1
    first = np.zeros(shape, np.float32)
    first[3, 4, 2] = 2.0
    second = np.zeros(shape, np.float32)
    second[9, 7, 5], second[2, 2, 5] = -0.5, 0.2  # on the region centre's axial plane
    maps = [("saliency", _save(tmp_path / "a.nii.gz", first, _lps())),
            ("input_x_gradient", _save(tmp_path / "b.nii.gz", second, _lps()))]
    drawn = comparison_figure(scan, maps, prediction=_save(tmp_path / "l.nii.gz", labels, _lps()), region_label=1)
    info = drawn.info
    assert info.rows == ("saliency", "input_x_gradient") and info.point_index == info.region_index == (9, 7, 5)
    assert [s.cmap for s in info.scales] == ["inferno", "RdBu_r"] and drawn.bars.keys() == {"saliency", "input_x_gradient"}
    assert drawn.bars["saliency"].scale.vmax == 2.0 and drawn.bars["input_x_gradient"].scale.vmax == pytest.approx(
        np.percentile([0.2, 0.5], 99.5))
    rgb = drawn.rgb()
    panel = drawn.panels["input_x_gradient/axial"]
    x, y = panel.pixel_of(load_volume(scan).to_display((9, 7, 5)))
    assert rgb[int(y), int(x), 2] > rgb[int(y), int(x), 0] + SATURATED  # negative: blue
    left, top, right, bottom = drawn.panels["saliency/axial"].box()
    crop = rgb[top:bottom, left:right].astype(int)
    assert not np.any(crop[..., 0] > crop[..., 1] + SATURATED)  # no inferno: its peak is on another plane
    without_region = comparison_figure(scan, maps)
    assert without_region.info.point_index == (3, 4, 2)  # the first map's peak
    info = render_comparison(scan, maps, tmp_path / "compare.png", title="case")
    assert (tmp_path / "compare.png").stat().st_size > 0 and info.width_px == 1600


def _text_boxes(drawn):
    """(text, (left, top, right, bottom), is_letter) of every text of a drawn figure, canvas pixels from the top."""
    drawn.rgb()
    renderer = drawn.figure.canvas.get_renderer()
    height = drawn.figure.bbox.height
    boxes = []
    for text in drawn.figure.texts:
        if not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        boxes.append((text.get_text(), (box.x0, height - box.y1, box.x1, height - box.y0),
                      bool(text.get_path_effects())))
    return boxes


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_do_not_overlap_each_other_or_the_panels(tmp_path):
    shape = (24, 20, 12)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    scan = _save(tmp_path / "scan.nii.gz", _grey(shape), affine)
    values = np.random.default_rng(4).normal(0, 1e-6, shape).astype(np.float32)  # long tick labels
    labels = np.zeros(shape, np.uint8)
    labels[5:9, 5:9, 3:6] = 1
    map_path = _save(tmp_path / "a_rather_long_method_name_argmax1.nii.gz", values, affine)
    label_path = _save(tmp_path / "label.nii.gz", labels, affine)
    figures = [
        map_figure(scan, map_path, prediction=label_path, region_label=1, label_names={1: "tumour"},
                   title="patient 0042 — a long title that should still fit on the page"),
        comparison_figure(scan, [("saliency", map_path), ("integrated_gradients", map_path)], prediction=label_path,
                          region_label=1),
    ]
    for drawn in figures:
        boxes = _text_boxes(drawn)
        width, height = drawn.info.width_px, drawn.info.height_px
        for text, box, _ in boxes:
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height, text
        for (text_a, a, _), (text_b, b, _) in itertools.combinations(boxes, 2):
            assert not _overlap(a, b), (text_a, text_b)
        for text, box, letter in boxes:
            if not letter:
                for name, panel in drawn.panels.items():
                    assert not _overlap(box, panel.box()), (text, name)
        assert min(t.get_fontsize() for t in drawn.figure.texts) >= 9


def test_a_demo_sized_volume_renders_quickly(tmp_path):
    shape = (96, 96, 64)
    affine = _lps((0.8, 0.8, 1.2))
    scan = _save(tmp_path / "scan.nii.gz", (_grey(shape) * 1000).astype(np.int16), affine)
    values = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    labels = (np.abs(values) > 2.5).astype(np.uint8)
    info = render_map_figure(scan, _save(tmp_path / "map.nii.gz", values, affine), tmp_path / "f.png",
                             prediction=_save(tmp_path / "l.nii.gz", labels, affine), region_label=1)
    assert info.seconds < 5.0, info.seconds  # about 0.7 s on one core of the development machine
    assert info.rows == ("peak", "region", "mip") and info.width_px == 1600
    assert all(panel in ("axial", "coronal", "sagittal") for panel in info.planes) and len(PLANES) == 3


def test_a_map_written_as_png_is_read_on_the_picture_grid(tmp_path):
    from PIL import Image

    from esegeta_monai.monai.io.png import write_png_map

    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(tmp_path / "scan.png")
    values = np.zeros((40, 30), np.float32)  # (x, y) as MONAI reads the picture
    values[33, 4], values[5, 25] = 2.0, -0.5
    write_png_map(values, tmp_path / "map.png")
    drawn = map_figure(tmp_path / "scan.png", tmp_path / "map.png")
    assert drawn.info.peak_index == (33, 4) and drawn.info.peak_value == pytest.approx(2.0, abs=1e-3)
    assert drawn.info.cmap == "RdBu_r"
    panel = drawn.panels["peak/image"]
    rgb = drawn.rgb()
    x, y = panel.pixel_of_image(4, 33)  # row = y, column = x
    assert rgb[int(y), int(x), 0] > rgb[int(y), int(x), 2] + SATURATED  # positive: red
