"""The 3D Slicer scene: valid MRML whose nodes point at each other and at files that exist, with
the scan, maps and prediction in the slice views as Slicer 5 expects them."""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from esegeta_monai.errors import InputError
from esegeta_monai.report.slicer import (
    APPLICATION_NODE_IDS, BUILTIN_COLOR_NODE_IDS, DIVERGING, GREY, LABELS, SEQUENTIAL, slicer_command, write_scene,
)

SHAPE = (12, 10, 8)
SPACING = (0.8, 0.9, 1.5)
VIEWS = ("Red", "Yellow", "Green")


def _affine() -> np.ndarray:
    """Anisotropic, rotated 30° about z, x flipped, off-origin: a geometry no default would match."""
    th = np.deg2rad(30.0)
    rotation = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(SPACING)
    affine[:3, 3] = [40.0, -25.0, 12.0]
    return affine


@pytest.fixture
def case(tmp_path):
    """``tmp/study/data/scan.nii.gz`` outside the output folder ``tmp/study/out``; maps and the
    prediction in ``out/img``, one of them with a space in its name."""
    rng = np.random.default_rng(0)
    study = tmp_path / "study"
    data, image_dir = study / "data", study / "out" / "img"
    data.mkdir(parents=True)
    image_dir.mkdir(parents=True)
    affine = _affine()
    scan = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    signed = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    signed[0] = 0.0  # zeros must not pull the window down
    nonneg = np.abs(rng.normal(0.0, 2.0, SHAPE)).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:8, 2:6, 2:5], labels[8:11, 6:9, 4:7] = 1, 2
    files = {"scan": data / "scan.nii.gz", "signed": image_dir / "integrated gradients_argmax1.nii.gz",
             "nonneg": image_dir / "saliency_argmax1.nii.gz", "prediction": image_dir / "prediction.nii.gz"}
    for key, values in (("scan", scan), ("signed", signed), ("nonneg", nonneg), ("prediction", labels)):
        nib.save(nib.Nifti1Image(values, affine), files[key])
    maps = [("integrated gradients argmax1", files["signed"]), ("saliency argmax1", files["nonneg"])]
    return {"files": files, "maps": maps, "values": {"scan": scan, "signed": signed, "nonneg": nonneg},
            "affine": affine, "study": study, "scene": image_dir / "scene.mrml"}


def _write(case, **kwargs) -> Path:
    kwargs.setdefault("prediction", case["files"]["prediction"])
    return write_scene(case["scene"], case["files"]["scan"], case["maps"], **kwargs)


def _root(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _nodes(root: ET.Element) -> dict[str, ET.Element]:
    return {element.get("id"): element for element in root}


def _references(element: ET.Element) -> dict[str, list[str]]:
    """Parse ``references="role:id id;role:id;"`` the way vtkMRMLNode::ParseReferencesAttribute does."""
    roles = {}
    for part in filter(None, (element.get("references") or "").split(";")):
        role, ids = part.split(":", 1)
        roles[role] = ids.split()
    return roles


def _storage_file(nodes, volume_id: str, folder: Path) -> Path:
    storage = nodes[_references(nodes[volume_id])["storage"][0]]
    return folder / unquote(storage.get("fileName"))


def _display(nodes, volume_id: str) -> ET.Element:
    return nodes[_references(nodes[volume_id])["display"][0]]


def _volume_of(nodes, file: Path, folder: Path) -> str:
    """The id of the volume node whose storage file is ``file``."""
    matches = [node_id for node_id, node in nodes.items() if node.tag in ("Volume", "LabelMapVolume")
               and _storage_file(nodes, node_id, folder).resolve() == file.resolve()]
    assert len(matches) == 1, matches
    return matches[0]


def test_root_is_mrml_with_a_version_and_utf8_declaration(case):
    path = _write(case, label_names={0: "background", 1: "vessel µ", 2: "wall"})
    assert path == case["scene"]
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = _root(path)
    assert root.tag == "MRML"
    assert root.get("version", "").startswith("Slicer ")


def test_file_names_are_relative_existing_and_survive_moving_the_study(case, tmp_path):
    path = _write(case, label_names={1: "vessel"})
    root = _root(path)
    names = [storage.get("fileName") for storage in root if storage.tag.endswith("Storage")]
    assert len(names) == 5  # scan, 2 maps, prediction, colour table
    assert all(not os.path.isabs(unquote(name)) and "\\" not in name for name in names)
    assert "../../data/scan.nii.gz" in names  # the scan lies outside the output folder
    assert "integrated%20gradients_argmax1.nii.gz" in names  # Slicer's escaping of a space
    assert all((path.parent / unquote(name)).is_file() for name in names)

    moved = tmp_path / "elsewhere" / "study"
    shutil.move(str(case["study"]), str(moved))
    scene = moved / "out" / "img" / "scene.mrml"
    assert all((scene.parent / unquote(name)).is_file() for name in names)


def test_moving_the_output_folder_alone_breaks_only_the_scan_link(case, tmp_path):
    path = _write(case)
    names = [s.get("fileName") for s in _root(path) if s.tag.endswith("Storage")]
    moved = tmp_path / "moved_out"
    shutil.move(str(case["study"] / "out"), str(moved))
    resolvable = {name: (moved / "img" / unquote(name)).is_file() for name in names}
    assert resolvable == {name: name != "../../data/scan.nii.gz" for name in names}


def test_ids_are_unique_and_every_reference_resolves(case):
    root = _root(_write(case, label_names={1: "vessel", 2: "wall"}))
    ids = [element.get("id") for element in root]
    assert len(ids) == len(set(ids))
    known = set(ids) | BUILTIN_COLOR_NODE_IDS | APPLICATION_NODE_IDS
    referenced = []
    for element in root:
        referenced += [node_id for ids_ in _references(element).values() for node_id in ids_]
        referenced += [element.get(attribute) for attribute in (
            "colorNodeID", "backgroundVolumeID", "foregroundVolumeID", "labelVolumeID", "activeVolumeID",
            "secondaryVolumeID", "ActiveLabelVolumeID") if element.get(attribute) is not None]
    assert len(referenced) > 30
    assert set(referenced) <= known, set(referenced) - known
    # a legacy *ID attribute says the same as the references attribute Slicer reads first
    for element in root.iter("SliceComposite"):
        roles = _references(element)
        for role in ("backgroundVolume", "foregroundVolume", "labelVolume"):
            assert roles[role] == [element.get(f"{role}ID")]


def test_every_referenced_volume_file_has_the_scan_geometry(case):
    root = _root(_write(case))
    nodes = _nodes(root)
    volumes = [node_id for node_id, node in nodes.items() if node.tag in ("Volume", "LabelMapVolume")]
    assert len(volumes) == 4
    for node_id in volumes:
        image = nib.load(_storage_file(nodes, node_id, case["scene"].parent))
        assert image.shape == SHAPE
        np.testing.assert_allclose(image.affine, case["affine"], atol=1e-5)


@pytest.mark.parametrize("visible, index", [(None, 0), ("saliency argmax1", 1)])
def test_views_show_scan_visible_map_at_40_percent_and_prediction_outlines(case, visible, index):
    root = _root(_write(case, visible=visible))
    nodes, folder = _nodes(root), case["scene"].parent
    scan = _volume_of(nodes, case["files"]["scan"], folder)
    shown = _volume_of(nodes, case["maps"][index][1], folder)
    other = _volume_of(nodes, case["maps"][1 - index][1], folder)
    prediction = _volume_of(nodes, case["files"]["prediction"], folder)
    assert nodes[prediction].tag == "LabelMapVolume" and nodes[other].tag == "Volume"  # loaded, selectable
    assert nodes[shown].get("name") == case["maps"][index][0]
    composites = {c.get("singletonTag"): c for c in root.iter("SliceComposite")}
    assert sorted(composites) == sorted(VIEWS)
    for view, composite in composites.items():
        assert composite.get("id") == f"vtkMRMLSliceCompositeNode{view}" and composite.get("layoutName") == view
        assert _references(composite) == {"backgroundVolume": [scan], "foregroundVolume": [shown],
                                          "labelVolume": [prediction]}
        assert float(composite.get("foregroundOpacity")) == pytest.approx(0.4)
    slices = {s.get("singletonTag"): s for s in root.iter("Slice")}
    assert {view: s.get("orientation") for view, s in slices.items()} == {
        "Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    assert all(s.get("useLabelOutline") == "true" for s in slices.values())
    selection = root.find("Selection")
    assert _references(selection)["ActiveVolume"] == [scan]
    assert _references(selection)["ActiveLabelVolume"] == [prediction]
    assert selection.get("activeVolumeID") == scan and selection.get("ActiveLabelVolumeID") == prediction


def test_slice_views_are_centred_on_the_scan_and_fit_it(case):
    root = _root(_write(case))
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, SHAPE[0] - 0.5) for j in (-0.5, SHAPE[1] - 0.5)
                        for k in (-0.5, SHAPE[2] - 0.5)]) @ case["affine"].T
    centre = (corners[:, :3].min(0) + corners[:, :3].max(0)) / 2
    extent = corners[:, :3].max(0) - corners[:, :3].min(0)
    in_plane = {"Red": (0, 1), "Yellow": (1, 2), "Green": (0, 2)}  # RAS axes seen in each view
    for view in root.iter("Slice"):
        slice_to_ras = np.array(view.get("sliceToRAS").split(), float).reshape(4, 4)
        np.testing.assert_allclose(slice_to_ras[:3, 3], centre, atol=1e-3)
        np.testing.assert_allclose(slice_to_ras[:3, :3] @ slice_to_ras[:3, :3].T, np.eye(3), atol=1e-9)
        field = np.array(view.get("fieldOfView").split(), float)
        axes = in_plane[view.get("singletonTag")]
        assert field[0] == field[1] == pytest.approx(max(extent[a] for a in axes), rel=1e-4)
    # the rotation of each view is Slicer's preset for its orientation (as a Slicer 5.6 scene saves them)
    presets = {"Axial": "-1 0 0 0 1 0 0 0 1", "Sagittal": "0 0 -1 -1 0 0 0 1 0", "Coronal": "-1 0 0 0 0 1 0 1 0"}
    for view in root.iter("Slice"):
        rotation = np.array(view.get("sliceToRAS").split(), float).reshape(4, 4)[:3, :3]
        assert rotation.ravel().tolist() == [float(v) for v in presets[view.get("orientation")].split()]
        assert all(view.get(f"orientationMatrix{name}") == preset for name, preset in presets.items())


def test_colour_tables_and_windows(case):
    root = _root(_write(case))
    nodes, folder, values = _nodes(root), case["scene"].parent, case["values"]
    scan = _display(nodes, _volume_of(nodes, case["files"]["scan"], folder))
    assert scan.get("colorNodeID") == GREY and scan.get("autoWindowLevel") == "0"
    low, high = np.percentile(values["scan"], [1, 99])
    assert float(scan.get("window")) == pytest.approx(high - low, rel=1e-4)
    assert float(scan.get("level")) == pytest.approx((high + low) / 2, rel=1e-4)

    signed = _display(nodes, _volume_of(nodes, case["files"]["signed"], folder))
    magnitude = np.abs(values["signed"][values["signed"] != 0])
    assert signed.get("colorNodeID") == DIVERGING
    assert float(signed.get("level")) == 0.0
    assert float(signed.get("window")) == pytest.approx(2 * np.percentile(magnitude, 99), rel=1e-4)

    nonneg = _display(nodes, _volume_of(nodes, case["files"]["nonneg"], folder))
    top = np.percentile(values["nonneg"][values["nonneg"] > 0], 99)
    assert nonneg.get("colorNodeID") == SEQUENTIAL
    assert float(nonneg.get("window")) == pytest.approx(top, rel=1e-4)
    assert float(nonneg.get("level")) == pytest.approx(top / 2, rel=1e-4)


def test_prediction_colours_by_generic_anatomy_without_names(case):
    root = _root(_write(case))
    nodes = _nodes(root)
    prediction = _volume_of(nodes, case["files"]["prediction"], case["scene"].parent)
    assert _display(nodes, prediction).tag == "LabelMapVolumeDisplay"
    assert _display(nodes, prediction).get("colorNodeID") == LABELS
    assert root.find("ColorTable") is None
    assert not list(case["scene"].parent.glob("*.ctbl"))


def test_prediction_colour_table_names_the_classes(case):
    root = _root(_write(case, label_names={0: "background", 1: "blood vessel"}))
    nodes = _nodes(root)
    prediction = _volume_of(nodes, case["files"]["prediction"], case["scene"].parent)
    table = nodes[_display(nodes, prediction).get("colorNodeID")]
    assert table.tag == "ColorTable" and table.get("numcolors") == "3"
    storage = nodes[_references(table)["storage"][0]]
    rows = [line.split() for line in (case["scene"].parent / unquote(storage.get("fileName"))).read_text(
        encoding="utf-8").splitlines() if not line.startswith("#")]
    assert [row[:2] for row in rows] == [["0", "background"], ["1", "blood_vessel"], ["2", "class_2"]]
    assert rows[0][5] == "0" and all(row[5] == "255" for row in rows[1:])  # background transparent
    assert len({tuple(row[2:5]) for row in rows}) == 3  # distinct colours


def test_a_scene_without_maps_or_prediction_shows_the_scan_alone(case):
    path = write_scene(case["scene"], case["files"]["scan"], [])
    composite = _root(path).find("SliceComposite")
    assert list(_references(composite)) == ["backgroundVolume"]
    assert composite.get("foregroundVolumeID") is None and float(composite.get("foregroundOpacity")) == 0.0


def test_a_png_scan_is_placed_where_slicer_puts_it(tmp_path):
    """A 2D classifier's PNG input (read with SimpleITK): ITK puts pixel (0, 0) at LPS 0, so RAS x
    and y of the image's centre are minus half its width and height."""
    import SimpleITK as sitk

    pixels = (np.arange(20 * 30).reshape(20, 30) % 200).astype(np.uint8)  # 20 rows, 30 columns
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "scan.png"))
    nib.save(nib.Nifti1Image(np.ones((30, 20), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "m.nii.gz")
    root = _root(write_scene(tmp_path / "scene.mrml", tmp_path / "scan.png", [("m", tmp_path / "m.nii.gz")]))
    red = np.array(root.find("Slice[@singletonTag='Red']").get("sliceToRAS").split(), float).reshape(4, 4)
    np.testing.assert_allclose(red[:3, 3], [-14.5, -9.5, 0.0])
    scan = root.find("VolumeDisplay")
    low, high = np.percentile(pixels, [1, 99])
    assert float(scan.get("window")) == pytest.approx(high - low)


def test_bad_inputs_name_the_problem(case):
    with pytest.raises(InputError, match="not one of the maps"):
        _write(case, visible="gradcam")
    with pytest.raises(InputError, match="missing.nii.gz"):
        write_scene(case["scene"], case["files"]["scan"], [("x", case["scene"].parent / "missing.nii.gz")])


@pytest.mark.parametrize("scene", ["/data/out/img/scene.mrml", "/data/my out/it's \"here\"/scene µ.mrml"])
def test_slicer_command_survives_shell_quoting(scene):
    command = slicer_command(scene, slicer="/opt/Slicer 5.6/Slicer")
    program, flag, code = shlex.split(command)
    assert (program, flag) == ("/opt/Slicer 5.6/Slicer", "--python-code")
    call = ast.parse(code, mode="eval").body
    assert ast.unparse(call.func) == "slicer.util.loadScene"
    assert [ast.literal_eval(argument) for argument in call.args] == [scene] and not call.keywords


def test_slicer_command_makes_a_relative_scene_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = shlex.split(slicer_command("img/scene.mrml"))[2]
    assert ast.literal_eval(ast.parse(code, mode="eval").body.args[0]) == str(tmp_path / "img" / "scene.mrml")
