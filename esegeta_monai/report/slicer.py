"""A 3D Slicer scene (``.mrml``) per image: the scan with its maps on top, ready to explore.

:func:`write_scene` writes an MRML file (XML) that refers to the files already on disk; nothing is
converted or copied. Opened in 3D Slicer 5.x (File > Add Data, drag and drop, or the command of
:func:`slicer_command`) it shows, in the Red, Yellow and Green slice views:

* background: the input scan, grey, window/level from its 1st–99th percentiles;
* foreground: one map (``visible``, default the first) at 40 % opacity; every other map is loaded
  too and can be picked in each view's foreground selector (or the Volumes module);
* label layer: the prediction (if given) drawn as outlines, coloured by a table named after the
  classes (``label_names``) or by Slicer's GenericAnatomyColors.

Each map has its own colour table and window: a signed map (any value < 0) a diverging table
(blue–white–red) with the window centred on 0 and spanning ±the 99th percentile of its nonzero
``|values|``; a non-negative map a sequential table (Inferno) from 0 to that percentile.

Layout of the file (tags, attributes and node ids as a scene saved by Slicer 5.6 writes them):

==========================  ======================================================================
element                     what it holds
==========================  ======================================================================
``MRML``                    the root; ``version`` names the release whose scenes this follows
``Selection``               singleton: active volume (scan), secondary volume (the visible map) and
                            active label volume (prediction), plus the application's unit nodes
``Slice`` ×3                singletons Red/Yellow/Green: axial/sagittal/coronal, centred on the
                            scan and zoomed to it, label layer drawn as outlines
``SliceComposite`` ×3       singletons: background/foreground/label volume ids, foreground opacity
``VolumeDisplay``           per scalar volume: ``colorNodeID``, ``window``, ``level``,
                            ``autoWindowLevel="0"`` (keep ours)
``VolumeArchetypeStorage``  per volume: ``fileName``, relative to the scene's folder
``Volume``                  per scalar volume: ``references="display:…;storage:…;"``
``LabelMapVolume`` (+ its   the prediction; with ``label_names`` also a ``ColorTable`` whose colours
display and storage)        come from ``<prediction stem>_labels.ctbl`` written next to the scene
==========================  ======================================================================

Slice composite and selection nodes carry their volumes both in ``references`` (what Slicer ≥ 4.x
writes) and in the legacy attributes (``backgroundVolumeID``, ``foregroundVolumeID``,
``labelVolumeID``, ``activeVolumeID``, ``secondaryVolumeID``, ``ActiveLabelVolumeID``) that Slicer
still reads; Slicer's reader takes ``references`` first (``vtkMRMLNode::ReadXMLAttributes``).

Paths: every ``fileName`` is relative to the scene's folder (``os.path.relpath``, ``/``-separated,
with Slicer's URL escaping of ``%``, space, quotes, ``<`` and ``>``), so the output folder can be
moved or copied as a whole. A scan outside the output folder is reached with ``../``: moving the
output folder without the scan breaks that one link — Slicer then opens the scene with the maps
and the prediction and reports the scan as missing. (On Windows a scan on another drive has no
relative path and is written absolute.)

Colour node ids built into Slicer (:data:`BUILTIN_COLOR_NODE_IDS`) and the unit node ids it creates
at start-up (:data:`APPLICATION_NODE_IDS`) are not in the file; they were checked against
``Libs/MRML/Logic/vtkMRMLColorLogic.h`` of Slicer/Slicer (the table of default colour nodes:
``vtkMRMLColorTableNodeGrey``, ``vtkMRMLColorTableNodeFileDivergingBlueRed.txt``,
``vtkMRMLColorTableNodeFileInferno.txt``, ``vtkMRMLColorTableNodeFileGenericAnatomyColors.txt``) and
a scene saved by Slicer 5.6.1 (the unit node ids). A Slicer without one of these colour tables (older
than the header checked) shows that volume with a colour table missing; the scene still opens.

Example:
    >>> import os, tempfile, numpy as np, nibabel as nib
    >>> import xml.etree.ElementTree as ET
    >>> folder = tempfile.mkdtemp()
    >>> affine = np.diag([0.8, 0.8, 1.2, 1.0])
    >>> scan = os.path.join(folder, "scan.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 4), np.float32), affine), scan)
    >>> saliency = os.path.join(folder, "saliency_argmax1.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.linspace(-1, 1, 256, dtype=np.float32).reshape(8, 8, 4), affine), saliency)
    >>> scene = write_scene(os.path.join(folder, "scene.mrml"), scan, [("saliency argmax1", saliency)])
    >>> root = ET.parse(scene).getroot()
    >>> [s.get("fileName") for s in root.iter("VolumeArchetypeStorage")]
    ['scan.nii.gz', 'saliency_argmax1.nii.gz']
    >>> red = root.find("SliceComposite[@singletonTag='Red']")
    >>> red.get("foregroundVolumeID"), red.get("foregroundOpacity")
    ('vtkMRMLScalarVolumeNode2', '0.4')
    >>> print(slicer_command("/data/out/scene.mrml"))
    Slicer --python-code 'slicer.util.loadScene("/data/out/scene.mrml")'
"""

from __future__ import annotations

import json
import os
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from esegeta_monai.errors import InputError
from esegeta_monai.jobs.atomic import atomic_path

__all__ = [
    "write_scene", "slicer_command", "MRML_VERSION", "GREY", "DIVERGING", "SEQUENTIAL", "LABELS",
    "BUILTIN_COLOR_NODE_IDS", "APPLICATION_NODE_IDS", "FOREGROUND_OPACITY", "VIEWS",
]

#: the ``version`` of the MRML root: the release whose saved scenes this layout follows
MRML_VERSION = "Slicer 5.6.1 32438"

GREY = "vtkMRMLColorTableNodeGrey"
DIVERGING = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
SEQUENTIAL = "vtkMRMLColorTableNodeFileInferno.txt"
LABELS = "vtkMRMLColorTableNodeFileGenericAnatomyColors.txt"
#: colour nodes Slicer creates at start-up (never written in a scene), referred to by id
BUILTIN_COLOR_NODE_IDS = frozenset({GREY, DIVERGING, SEQUENTIAL, LABELS})
#: unit nodes Slicer creates at start-up, by quantity; the selection node keeps referring to them
UNIT_NODE_IDS = {
    quantity: f"vtkMRMLUnitNodeApplication{quantity.capitalize()}"
    for quantity in ("area", "frequency", "intensity", "length", "time", "velocity", "volume")
}
APPLICATION_NODE_IDS = frozenset(UNIT_NODE_IDS.values())

FOREGROUND_OPACITY = 0.4
SCAN_PERCENTILES = (1.0, 99.0)
MAP_PERCENTILE = 99.0


@dataclass(frozen=True)
class View:
    """One slice view: its name, label letter, layout colour and orientation (rows of the rotation
    part of ``sliceToRAS``, as Slicer's presets)."""

    name: str
    letter: str
    color: str
    orientation: str
    rotation: tuple[tuple[int, int, int], ...]


AXIAL = ((-1, 0, 0), (0, 1, 0), (0, 0, 1))
SAGITTAL = ((0, 0, -1), (-1, 0, 0), (0, 1, 0))
CORONAL = ((-1, 0, 0), (0, 0, 1), (0, 1, 0))
VIEWS = (
    View("Red", "R", "0.952941 0.290196 0.2", "Axial", AXIAL),
    View("Yellow", "Y", "0.929412 0.835294 0.298039", "Sagittal", SAGITTAL),
    View("Green", "G", "0.431373 0.690196 0.294118", "Coronal", CORONAL),
)

#: colours of the generated label table (RGB 0–255), class 1 first; repeats past the last
LABEL_PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
)


@dataclass(frozen=True)
class Image:
    """What the scene needs of a file: its voxels, its grid (x, y, z) and where it lies (RAS affine)."""

    values: np.ndarray
    shape: tuple[int, ...]
    affine: np.ndarray


def write_scene(
    path: str | Path,
    scan: str | Path,
    maps: Sequence[tuple[str, str | Path]],
    *,
    prediction: str | Path | None = None,
    visible: str | None = None,
    label_names: Mapping[int, str] | None = None,
) -> Path:
    """Write the MRML scene of one image at ``path`` (exactly there, UTF-8) and return it.

    ``maps`` are ``(label, file)`` pairs; ``visible`` is the label shown over the scan (default the
    first); ``prediction`` a label map drawn as outlines, coloured and named by ``label_names``
    (``{class: name}``; then ``<prediction stem>_labels.ctbl`` is written next to the scene).
    Raises :class:`InputError` for a missing or unreadable file or an unknown ``visible`` label.
    """
    path = Path(path)
    folder = path.parent
    labels = [label for label, _ in maps]
    if visible is None:
        visible = labels[0] if labels else None
    elif visible not in labels:
        raise InputError(f"visible={visible!r} is not one of the maps {labels}")

    scene = _Scene(folder)
    scan_image = _read(scan)
    scan_id = scene.scalar_volume(_stem(scan), scan, GREY, *_scan_window(scan_image.values))
    map_ids = {}
    for label, file in maps:
        values = _read(file).values
        color = DIVERGING if _is_signed(values) else SEQUENTIAL
        map_ids.setdefault(label, scene.scalar_volume(label, file, color, *_map_window(values)))
    label_id = None
    if prediction is not None:
        color = LABELS
        if label_names:
            table = folder / f"{_stem(prediction)}_labels.ctbl"
            classes = _label_table(_read(prediction).values, label_names)
            _write_color_table(table, classes)
            color = scene.color_table(f"{_stem(prediction)} labels", table, max(classes) + 1)
        label_id = scene.label_volume(_stem(prediction), prediction, color)
    foreground = map_ids.get(visible) if visible is not None else None
    scene.views(scan_image, scan_id, foreground, label_id)
    scene.selection(scan_id, foreground, label_id)
    return scene.write(path)


def slicer_command(scene: str | Path, slicer: str = "Slicer") -> str:
    """The shell command (POSIX quoting) that starts 3D Slicer with ``scene`` loaded.

    Example:
        >>> print(slicer_command("/tmp/my scene.mrml"))
        Slicer --python-code 'slicer.util.loadScene("/tmp/my scene.mrml")'
        >>> shlex.split(slicer_command("/tmp/my scene.mrml"))[2]
        'slicer.util.loadScene("/tmp/my scene.mrml")'
    """
    code = f"slicer.util.loadScene({json.dumps(os.path.abspath(scene))})"  # a JSON string is a Python literal
    return shlex.join([slicer, "--python-code", code])


class _Scene:
    """The MRML tree being built, with Slicer-style node ids (class name + counter per class)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = ET.Element("MRML", {"version": MRML_VERSION, "userTags": ""})
        self.counters: dict[str, int] = {}
        self.data: list[ET.Element] = []  # volume, display, storage and colour nodes, after the views

    def new_id(self, node_class: str) -> str:
        self.counters[node_class] = self.counters.get(node_class, 0) + 1
        return f"{node_class}{self.counters[node_class]}"

    def node(self, tag: str, node_id: str, name: str, hidden: bool, **attributes: str) -> ET.Element:
        element = ET.Element(tag, {
            "id": node_id, "name": name, "hideFromEditors": _bool(hidden), "selectable": "true",
            "selected": "false", **attributes})
        self.data.append(element)
        return element

    def storage(self, tag: str, node_class: str, file: str | Path, **attributes: str) -> str:
        node_id = self.new_id(node_class)
        self.node(tag, node_id, tag, True, fileName=_url_encode(_relative(file, self.folder)),
                  useCompression="1", readState="0", writeState="0", **attributes)
        return node_id

    def volume_storage(self, file: str | Path) -> str:
        if not Path(file).is_file():
            raise InputError(f"{file}: no such file for the Slicer scene")
        return self.storage("VolumeArchetypeStorage", "vtkMRMLVolumeArchetypeStorageNode", file,
                            defaultWriteFileExtension="nrrd", centerImage="0", UseOrientationFromFile="1")

    def scalar_volume(self, name: str, file: str | Path, color: str, window: float, level: float) -> str:
        display = self.new_id("vtkMRMLScalarVolumeDisplayNode")
        self.node("VolumeDisplay", display, "VolumeDisplay", True, visibility="true", opacity="1",
                  colorNodeID=color, window=_number(window), level=_number(level), interpolate="1",
                  autoWindowLevel="0", applyThreshold="0", autoThreshold="0")
        storage = self.volume_storage(file)
        node_id = self.new_id("vtkMRMLScalarVolumeNode")
        self.node("Volume", node_id, name, False, references=_references(display=display, storage=storage),
                  userTags="")
        return node_id

    def label_volume(self, name: str, file: str | Path, color: str) -> str:
        display = self.new_id("vtkMRMLLabelMapVolumeDisplayNode")
        self.node("LabelMapVolumeDisplay", display, "LabelMapVolumeDisplay", True, visibility="true", opacity="1",
                  colorNodeID=color)
        storage = self.volume_storage(file)
        node_id = self.new_id("vtkMRMLLabelMapVolumeNode")
        self.node("LabelMapVolume", node_id, name, False, references=_references(display=display, storage=storage),
                  userTags="")
        return node_id

    def color_table(self, name: str, file: Path, colors: int) -> str:
        storage = self.storage("ColorTableStorage", "vtkMRMLColorTableStorageNode", file,
                               defaultWriteFileExtension="ctbl")
        node_id = self.new_id("vtkMRMLColorTableNode")
        self.node("ColorTable", node_id, name, False, attributes="Category:File",
                  references=_references(storage=storage), userTags="", type="14", numcolors=str(colors))
        return node_id

    def views(self, scan: Image, background: str, foreground: str | None, label: str | None) -> None:
        """The Red/Yellow/Green slice nodes (centred on the scan, zoomed to fit it) and their composites."""
        low, high = _ras_box(scan)
        centre, extent = (low + high) / 2, high - low
        thickness = float(np.linalg.norm(scan.affine[:3, :3], axis=0).min())
        for view in VIEWS:
            rotation = np.array(view.rotation, dtype=float)
            width, height = (float(np.abs(rotation[:, axis]) @ extent) for axis in (0, 1))
            side = max(width, height, 1e-3)
            slice_to_ras = np.eye(4)
            slice_to_ras[:3, :3], slice_to_ras[:3, 3] = rotation, centre
            ET.SubElement(self.root, "Slice", {
                "id": f"vtkMRMLSliceNode{view.name}", "name": view.name, "hideFromEditors": "false",
                "selectable": "true", "selected": "false", "singletonTag": view.name,
                "attributes": "MappedInLayout:1", "layoutLabel": view.letter, "layoutName": view.name,
                "active": "false", "visibility": "true", "backgroundColor": "0 0 0", "backgroundColor2": "0 0 0",
                "layoutColor": view.color, "AxisLabels": "L;R;P;A;I;S",
                "fieldOfView": _numbers([side, side, thickness]), "dimensions": "256 256 1", "xyzOrigin": "0 0 0",
                "sliceResolutionMode": "1", "sliceToRAS": _numbers(slice_to_ras.ravel()),
                "orientationMatrixAxial": _numbers(np.ravel(AXIAL)),
                "orientationMatrixSagittal": _numbers(np.ravel(SAGITTAL)),
                "orientationMatrixCoronal": _numbers(np.ravel(CORONAL)),
                "orientation": view.orientation, "defaultOrientation": view.orientation,
                "orientationReference": view.orientation, "jumpMode": "1", "sliceVisibility": "false",
                "widgetVisibility": "false", "widgetOutlineVisibility": "true", "useLabelOutline": "true",
                "sliceSpacingMode": "0", "prescribedSliceSpacing": "1 1 1",
            })
        layers = {"backgroundVolume": background, "foregroundVolume": foreground, "labelVolume": label}
        legacy = {f"{role}ID": node_id for role, node_id in layers.items() if node_id}
        for view in VIEWS:
            ET.SubElement(self.root, "SliceComposite", {
                "id": f"vtkMRMLSliceCompositeNode{view.name}", "name": "SliceComposite", "hideFromEditors": "true",
                "selectable": "true", "selected": "false", "singletonTag": view.name,
                "references": _references(**layers), **legacy, "compositing": "0",
                "foregroundOpacity": _number(FOREGROUND_OPACITY if foreground else 0.0), "labelOpacity": "1",
                "linkedControl": "1", "hotLinkedControl": "0", "fiducialVisibility": "1",
                "fiducialLabelVisibility": "1", "layoutName": view.name, "doPropagateVolumeSelection": "1",
            })

    def selection(self, active: str, secondary: str | None, label: str | None) -> None:
        """The selection singleton: Slicer propagates these to the views (background, foreground,
        label) when asked, and its unit references must survive the scene replacing the node."""
        roles = {"ActiveVolume": active, "SecondaryVolume": secondary, "ActiveLabelVolume": label}
        roles.update({f"unit/{quantity}": node_id for quantity, node_id in UNIT_NODE_IDS.items()})
        legacy = {"activeVolumeID": active, "secondaryVolumeID": secondary, "ActiveLabelVolumeID": label}
        selection = ET.Element("Selection", {
            "id": "vtkMRMLSelectionNodeSingleton", "name": "Selection", "hideFromEditors": "true",
            "selectable": "true", "selected": "false", "singletonTag": "Singleton",
            "references": _references(**roles), **{name: value for name, value in legacy.items() if value}})
        self.root.insert(0, selection)

    def write(self, path: Path) -> Path:
        self.root.extend(self.data)
        tree = ET.ElementTree(self.root)
        ET.indent(tree, space=" ")
        with open(path, "wb") as stream:
            tree.write(stream, encoding="UTF-8", xml_declaration=True)
            stream.write(b"\n")
        return path


def _read(path: str | Path) -> Image:
    """Voxels (float32) and RAS affine of a NIfTI file (nibabel), or of any other format SimpleITK reads."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file for the Slicer scene")
    try:
        image = nib.load(path)
        return Image(np.asarray(image.get_fdata(dtype=np.float32)), tuple(image.shape[:3]),
                     np.asarray(image.affine, dtype=float))
    except nib.filebasedimages.ImageFileError:
        pass
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read ({error})") from error
    dimension = image.GetDimension()
    lps = np.eye(4)
    lps[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension)) * image.GetSpacing()
    lps[:dimension, 3] = image.GetOrigin()
    values = sitk.GetArrayFromImage(image).astype(np.float32)  # only its values matter, not their order
    return Image(values, tuple(image.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def _ras_box(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest RAS corner of the voxels' extent (centres ± half a voxel)."""
    shape = (tuple(image.shape) + (1, 1, 1))[:3]
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij")).reshape(3, -1)
    ras = image.affine[:3, :3] @ corners + image.affine[:3, 3:4]
    return ras.min(axis=1), ras.max(axis=1)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _scan_window(values: np.ndarray) -> tuple[float, float]:
    """(window, level) spanning the 1st–99th percentiles (the full range if they coincide)."""
    finite = _finite(values)
    if finite.size == 0:
        return 1.0, 0.0
    low, high = (float(v) for v in np.percentile(finite, SCAN_PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1.0
    return high - low, (high + low) / 2


def _is_signed(values: np.ndarray) -> bool:
    finite = _finite(values)
    return bool(finite.size and finite.min() < 0)


def _map_window(values: np.ndarray) -> tuple[float, float]:
    """(window, level): ±the 99th percentile of nonzero |values| for a signed map, 0 to it otherwise."""
    magnitude = np.abs(_finite(values))
    nonzero = magnitude[magnitude > 0]
    top = float(np.percentile(nonzero, MAP_PERCENTILE)) if nonzero.size else 0.0
    top = top if top > 0 else (float(nonzero.max()) if nonzero.size else 1.0)
    return (2 * top, 0.0) if _is_signed(values) else (top, top / 2)


def _label_table(values: np.ndarray, names: Mapping[int, str]) -> dict[int, str]:
    """``{label: name}`` for every named class and every class in the prediction (``class_<k>``)."""
    present = {int(v) for v in np.unique(_finite(values))}
    table = {int(k): str(v) for k, v in names.items()}
    table.update({k: f"class_{k}" for k in present - set(table)})
    return dict(sorted(table.items()))


def _write_color_table(path: Path, table: Mapping[int, str]) -> None:
    """A Slicer colour table file: ``label name r g b a`` per line (0–255; background transparent)."""
    lines = ["# 3D Slicer colour table written by esegeta_monai: label name r g b a"]
    for label, name in table.items():
        red, green, blue = LABEL_PALETTE[(label - 1) % len(LABEL_PALETTE)] if label > 0 else (0, 0, 0)
        alpha = 255 if label > 0 else 0
        lines.append(f"{label} {'_'.join(name.split()) or f'class_{label}'} {red} {green} {blue} {alpha}")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _relative(file: str | Path, folder: Path) -> str:
    """``file`` relative to ``folder``, ``/``-separated (absolute where no relative path exists)."""
    absolute = os.path.abspath(file)
    try:
        relative = os.path.relpath(absolute, os.path.abspath(folder))
    except ValueError:  # Windows: another drive
        relative = absolute
    return relative.replace(os.sep, "/")


#: Slicer's escaping of file names in scenes (vtkMRMLNode::URLEncodeString), ``%`` first
_URL_ESCAPES = (("%", "%25"), (" ", "%20"), ("'", "%27"), (">", "%3E"), ("<", "%3C"), ('"', "%22"))


def _url_encode(text: str) -> str:
    for character, escape in _URL_ESCAPES:
        text = text.replace(character, escape)
    return text


def _references(**roles: str | None) -> str:
    """Slicer's ``references`` attribute: ``role:id;`` for every role that has a node."""
    return "".join(f"{role}:{node_id};" for role, node_id in roles.items() if node_id)


def _stem(path: str | Path) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _number(value: float) -> str:
    return f"{float(value):.6g}"


def _numbers(values) -> str:
    return " ".join(_number(v) for v in values)
