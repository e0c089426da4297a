"""The HTML report of an output folder: an index of images × maps and one page per image.

:func:`write_report` reads ``OUT``'s journal (the runs, and the latest record of every output),
the files of every image folder (figures, ``prediction.json``, ``scene.mrml``, maps) and the
evaluation outputs when ``esegeta evaluate`` wrote into ``OUT``, and writes static pages:

- ``OUT/report/index.html``: the runs, the counts per status, a table of images × maps (one
  column per method and target) with a thumbnail of each map's figure, and the evaluation;
- ``OUT/report/images/<image>.html``: the figures, the records, the prediction, the scene;
- ``OUT/report/static/report.css``.

Every link is relative and URL-quoted and no page loads anything from the network, so the
folder opens from a file share and survives being zipped; no page needs JavaScript. The report
is regenerated from the journal every time (nothing is cached), each file written atomically.

Example:
    >>> import tempfile
    >>> from esegeta_monai.jobs.journal import Journal
    >>> from esegeta_monai.jobs.record import Record
    >>> from esegeta_monai.report.html import write_report
    >>> out = tempfile.mkdtemp()
    >>> run = Journal(out).start_run({"bundle": "demo", "methods": [{"name": "saliency", "as": "saliency", "options": {}}]})
    >>> Journal(out).append(Record("scan.nii.gz", "saliency", "argmax1", "failed", error="out of memory",
    ...                            path="scan/saliency_argmax1.nii.gz", run=run))
    >>> index = write_report(out, title="Demo")
    >>> index.relative_to(out).as_posix(), "out of memory" in index.read_text()
    ('report/index.html', True)
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import re
import shlex
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import jinja2

from esegeta_monai import __version__
from esegeta_monai.jobs.atomic import atomic_path
from esegeta_monai.jobs.journal import folder_journal
from esegeta_monai.jobs.naming import image_stem, safe_name
from esegeta_monai.jobs.record import KINDS, STATUSES, Record, now_iso
from esegeta_monai.report.render import thumbnail_path

__all__ = ["write_report", "REPORT_DIR"]

#: the report's folder inside the output folder
REPORT_DIR = "report"
#: the longest error text shown in a cell of the index (the image page shows all of it)
INDEX_ERROR_CHARS = 300
#: the width (CSS pixels) of a thumbnail in the index
THUMBNAIL_WIDTH = 200
#: the journal the Ignite handler writes in a bundle's output folder
EVALUATION_FILES = ("evaluation.csv", "evaluation.json", "ranking.json", "label_shares.csv", "label_shares_cohort.csv")


# -- what the pages show --------------------------------------------------------------------
@dataclass
class Figure:
    """A PNG figure of the output folder, or the reason there is none (``note``)."""

    label: str
    path: str  #: relative to the output folder
    shown: bool = False  #: the PNG is there and is shown
    note: str | None = None  #: why no figure is shown
    failed: bool = False  #: its job failed (``note`` has the error)
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None  #: a small picture of it for tables (relative to the output folder), when there is one
    thumbnail_width: int | None = None
    thumbnail_height: int | None = None

    def scaled_height(self, width: int) -> int | None:
        """The height that keeps the aspect ratio at ``width``."""
        return round(self.height * width / self.width) if self.width and self.height else None

    def small(self) -> tuple[str, int | None, int | None]:
        """What a table shows: ``(path, width, height)`` of the thumbnail when there is one, else of the figure."""
        if self.thumbnail:
            return self.thumbnail, self.thumbnail_width, self.thumbnail_height
        return self.path, self.width, self.height


@dataclass
class Cell:
    """One map of one image: its latest record (None: never run) and its figure."""

    method: str
    target: str
    record: Record | None
    figure: Figure | None
    anchor: str  #: the id of the map's card on the image page

    @property
    def status(self) -> str:
        return self.record.status if self.record else "missing"


@dataclass
class Prediction:
    """``prediction.json`` as rows: per class, voxels and volume (segmentation) or score and
    probability (classification)."""

    kind: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    predicted: str | None = None
    error: str | None = None


@dataclass
class ImageView:
    name: str  #: the image's folder in the output folder
    sources: list[str]  #: the input paths as the runs were given them
    cells: dict[tuple[str, str], Cell]
    compare: list[Figure]
    records: list[Record]  #: every latest record of the image, all kinds
    runs: list[dict[str, Any]]  #: the runs that wrote those records
    prediction: Prediction | None
    files: list[dict[str, Any]]  #: the image's outputs on disk: label, path, bytes
    scene: str | None  #: path of scene.mrml when it is there
    scene_error: str | None

    @property
    def page(self) -> str:
        """The page's path relative to the report folder."""
        return f"images/{self.name}.html"

    def counts(self) -> dict[str, int]:
        return _counts(c.record for c in self.cells.values() if c.record)


@dataclass
class Evaluation:
    metrics: list[str]
    rows: list[dict[str, Any]]  #: image, method, and per metric its row (value, status, error)
    ranking: dict[str, list[dict[str, Any]]]
    figures: list[Figure]
    files: list[str]


# -- reading the output folder -------------------------------------------------------------
def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _counts(records: Iterable[Record]) -> dict[str, int]:
    counted = Counter(r.status for r in records)
    return {status: counted.get(status, 0) for status in STATUSES}


def _png_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from a PNG's header (None, None if it is not a PNG)."""
    with open(path, "rb") as stream:
        head = stream.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None, None


def _folder_of(record: Record, folders: Mapping[str, str]) -> str:
    """The image folder a record belongs to: its path's first part, else the folder the journal
    reserved for its input, else the input's stem."""
    if record.path and "/" in record.path:
        return record.path.split("/", 1)[0]
    if record.image in folders:
        return folders[record.image]
    return safe_name(image_stem(record.image or "image"))


def _figure(out: Path, path: str, label: str, record: Record | None, command: str) -> Figure:
    figure = Figure(label, path)
    file = out / path
    if record is not None and record.status != "ok":
        figure.note, figure.failed = f"figure {record.status}: {record.error or 'no error recorded'}", True
    elif file.is_file():
        figure.shown = True
        figure.width, figure.height = _png_size(file)
        small = out / thumbnail_path(path)
        if small.is_file():
            figure.thumbnail = thumbnail_path(path)
            figure.thumbnail_width, figure.thumbnail_height = _png_size(small)
    elif record is not None:
        figure.note = "the figure's file is missing"
    else:
        figure.note = f"no figure (run `{command}`)"
    return figure


def _map_figure_path(record: Record, folder: str) -> str:
    if record.path:
        map_path = PurePosixPath(record.path)
        return str(map_path.parent / "figures" / f"{image_stem(map_path.name)}.png")
    return f"{folder}/figures/{record.method}_{record.target}.png"


def _prediction(folder: Path) -> Prediction | None:
    path = folder / "prediction.json"
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        kind = payload.get("kind", "?")
        if kind == "segmentation":
            rows = [{"id": k, "name": v.get("name", f"class {k}"), "voxels": v.get("voxels"), "volume_ml": v.get("volume_ml")}
                    for k, v in payload.get("classes", {}).items()]
            return Prediction(kind, sorted(rows, key=lambda r: _natural(str(r["id"]))))
        if kind == "classification":
            scores, probabilities = payload.get("scores", {}), payload.get("probabilities", {})
            names, predicted = payload.get("names", {}), payload.get("predicted")
            ids = sorted(set(scores) | set(probabilities) | set(names), key=_natural)
            rows = [{"id": k, "name": names.get(k, f"class {k}"), "score": scores.get(k), "probability": probabilities.get(k),
                     "predicted": str(predicted) == k} for k in ids]
            return Prediction(kind, rows, predicted=None if predicted is None else names.get(str(predicted), str(predicted)))
        return Prediction(kind, error=f"unknown prediction kind {kind!r}")
    except (ValueError, AttributeError, TypeError) as error:
        return Prediction("?", error=f"prediction.json unreadable: {error}")


def _files(out: Path, folder: str) -> list[dict[str, Any]]:
    """The image's output files (maps, label map, prediction, scene), not the figures."""
    root = out / folder
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    return [{"label": p.name, "path": f"{folder}/{p.name}", "bytes": p.stat().st_size}
            for p in sorted(files, key=lambda p: _natural(p.name))]


def _compare_figures(out: Path, folder: str, latest: Mapping[str, Record], command: str) -> list[Figure]:
    prefix = f"{folder}/figures/compare_"
    paths = {p for p, r in latest.items() if p.startswith(prefix) and r.kind == "figure"}
    figures_dir = out / folder / "figures"
    if figures_dir.is_dir():
        paths |= {f"{folder}/figures/{p.name}" for p in figures_dir.glob("compare_*.png")}
    return [_figure(out, p, f"all methods — {p[len(prefix):].removesuffix('.png')}", latest.get(p), command)
            for p in sorted(paths, key=_natural)]


#: the keys of a run entry shown in their own columns (the others, when set, are shown together)
_RUN_COLUMNS = {"type", "run", "started", "worker", "bundle", "out", "version", "methods", "targets", "window"}


def _run_view(run: Mapping[str, Any], records: list[Record]) -> dict[str, Any]:
    """A run entry of the journal as the pages show it, with the count per status of the maps it wrote."""
    methods = []
    for method in run.get("methods") or []:
        if isinstance(method, Mapping):
            label = str(method.get("as") or method.get("name"))
            methods.append({"label": label, "name": str(method.get("name") or label), "options": method.get("options") or {}})
        else:
            methods.append({"label": str(method), "name": str(method), "options": {}})
    return {
        "id": run.get("run", ""), "started": run.get("started", ""), "bundle": run.get("bundle") or "—",
        "version": run.get("version") or "—", "methods": methods, "targets": [str(t) for t in run.get("targets") or []],
        "window": dict(run.get("window") or {}),
        "extra": {k: v for k, v in run.items() if k not in _RUN_COLUMNS and v not in (None, False, [], {}, "")},
        "counts": _counts(r for r in records if r.run == run.get("run") and r.kind == "map"),
    }


def _reserved_folders(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Input → image folder, as the runs reserved them (the journal's ``names`` entries)."""
    folders: dict[str, str] = {}
    for entry in entries:
        if entry.get("type") == "names":
            folders.update(entry.get("folders") or {})
    return folders


def _columns(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every (method, target) of a map record, in the order the journal first saw them."""
    columns: dict[tuple[str, str], None] = {}
    for entry in entries:
        if entry.get("type") == "record" and entry.get("kind", "map") == "map":
            columns.setdefault((entry["method"], entry["target"]), None)
    return list(columns)


def _cells(out: Path, name: str, records: list[Record], latest: Mapping[str, Record], command: str) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    anchors: set[str] = set()
    for record in records:
        if record.kind != "map":
            continue
        figure = None
        if record.ok:
            path = _map_figure_path(record, name)
            figure = _figure(out, path, f"{record.method} — {record.target}", latest.get(path), command)
        anchor = f"map-{safe_name(record.method)}-{safe_name(record.target)}"
        while anchor in anchors:  # two labels that differ only in unsafe characters
            anchor += "-"
        anchors.add(anchor)
        cells[(record.method, record.target)] = Cell(record.method, record.target, record, figure, anchor)
    return cells


def _image_views(out: Path, entries: list[dict[str, Any]], latest: Mapping[str, Record], runs: Mapping[str, dict[str, Any]],
                 columns: list[tuple[str, str]], command: str) -> list[ImageView]:
    folders = _reserved_folders(entries)
    by_image: dict[str, list[Record]] = {name: [] for name in folders.values()}
    for record in latest.values():
        by_image.setdefault(_folder_of(record, folders), []).append(record)
    position = {column: i for i, column in enumerate(columns)}

    def order(record: Record) -> tuple:  # maps first, in the columns' order; then the other kinds
        return KINDS.index(record.kind), position.get((record.method, record.target), len(position)), _natural(record.path or "")

    views = []
    for name in sorted(by_image, key=_natural):
        records = sorted(by_image[name], key=order)
        scene_record = latest.get(f"{name}/scene.mrml")
        scene_ok = (out / name / "scene.mrml").is_file() and (scene_record is None or scene_record.ok)
        views.append(ImageView(
            name=name,
            sources=sorted({r.image for r in records if r.image} | {k for k, v in folders.items() if v == name}),
            cells=_cells(out, name, records, latest, command),
            compare=_compare_figures(out, name, latest, command),
            records=records,
            runs=[runs[r] for r in sorted({r.run for r in records if r.run in runs}, key=lambda r: runs[r]["started"])],
            prediction=_prediction(out / name),
            files=_files(out, name),
            scene=f"{name}/scene.mrml" if scene_ok else None,
            scene_error=None if scene_ok or scene_record is None else scene_record.error or f"scene {scene_record.status}",
        ))
    return views


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _evaluation(out: Path) -> Evaluation | None:
    present = [name for name in EVALUATION_FILES if (out / name).is_file()]
    pngs = sorted((p for p in out.glob("*.png") if p.is_file()), key=lambda p: _natural(p.name))
    if not present and not pngs:
        return None
    rows: list[dict[str, Any]] = []
    if (out / "evaluation.csv").is_file():
        with open(out / "evaluation.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
    elif (out / "evaluation.json").is_file():
        rows = json.loads((out / "evaluation.json").read_text()).get("rows", [])
    metrics: dict[str, None] = {}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        metrics.setdefault(row.get("metric", "?"), None)
        line = table.setdefault((row.get("image", "?"), row.get("method", "?")),
                                {"image": row.get("image", "?"), "method": row.get("method", "?"), "metrics": {}})
        line["metrics"][row.get("metric", "?")] = {"value": _number(row.get("value")), "status": row.get("status") or "ok",
                                                  "error": row.get("error") or None}
    ranking = json.loads((out / "ranking.json").read_text()) if (out / "ranking.json").is_file() else {}
    figures = [_figure(out, p.name, p.stem.replace("_", " "), None, "esegeta evaluate") for p in pngs]
    return Evaluation(list(metrics), list(table.values()), ranking, figures, present)


# -- rendering ------------------------------------------------------------------------------
def _url(root: str, path: str, anchor: str | None = None) -> str:
    """``path`` (``/``-separated, relative) as a relative URL from a page ``root`` away, every
    part quoted (``#``, ``%``, spaces and non-ASCII letters included), then ``#anchor``."""
    return root + "/".join(quote(part, safe="") for part in path.split("/")) + (f"#{quote(anchor, safe='')}" if anchor else "")


@jinja2.pass_context
def _out_url(context, path: str, anchor: str | None = None) -> str:
    return _url(context["out_root"], path, anchor)


@jinja2.pass_context
def _report_url(context, path: str, anchor: str | None = None) -> str:
    return _url(context["report_root"], path, anchor)


def _seconds(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def _when(value: Any) -> str:
    """An ISO time as ``2026-01-31 14:05:09 UTC``."""
    text = str(value or "")
    return text.replace("T", " ", 1).replace("+00:00", " UTC") if text else "—"


def _bytes(value: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # pragma: no cover


def _significant(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _compact(value: Any) -> str:
    """A setting as short text: lists as ``64×64×64``, dicts as ``k=v`` pairs."""
    if isinstance(value, (list, tuple)):
        numbers = all(isinstance(v, (int, float)) for v in value)
        return ("×" if numbers else ", ").join(_compact(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items()) or "—"
    return "—" if value is None else str(value)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("esegeta_monai.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),  # every value escaped, the templates being *.html.j2
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(out_url=_out_url, report_url=_report_url, seconds=_seconds, bytes=_bytes,
                               significant=_significant, compact=_compact, when=_when)
    return environment


def _stylesheet() -> str:
    return (importlib.resources.files("esegeta_monai.report") / "static" / "report.css").read_text(encoding="utf-8")


def _default_title(out: Path, runs: list[dict[str, Any]]) -> str:
    bundle = next((r["bundle"] for r in reversed(runs) if r["bundle"] != "—"), None)
    return f"{PurePosixPath(str(bundle)).name} — {out.resolve().name}" if bundle else f"esegeta report — {out.resolve().name}"


def _write(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically (whatever the locale's encoding)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(text.encode("utf-8"))
    return path


def write_report(out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the HTML report of the output folder ``out``; returns ``out/report/index.html``.

    Args:
        out: an output folder of ``esegeta explain`` (its journal, image folders, figures).
        title: the report's title (default: the bundle's and the folder's names).
    """
    out = Path(out)
    journal = folder_journal(out)
    entries, latest = journal.entries(), journal.latest_by_path()
    runs = {e.get("run"): _run_view(e, journal.records()) for e in entries if e.get("type") == "run"}
    where = shlex.quote(str(out.resolve()))
    columns = _columns(entries)
    images = _image_views(out, entries, latest, runs, columns, command=f"esegeta report {where}")
    maps = [r for r in latest.values() if r.kind == "map"]
    common = {"title": title or _default_title(out, list(runs.values())), "out": str(out.resolve()), "version": __version__,
              "generated": _when(now_iso()), "columns": columns}

    report = out / REPORT_DIR
    (report / "images").mkdir(parents=True, exist_ok=True)
    (report / "static").mkdir(exist_ok=True)
    _write(report / "static" / "report.css", _stylesheet())
    environment = _environment()
    for image in images:
        _write(report / image.page, environment.get_template("image.html.j2").render(
            **common, out_root="../../", report_root="../", image=image,
            slicer=f"esegeta slicer {where} --image {shlex.quote(image.name)}"))
    return _write(report / "index.html", environment.get_template("index.html.j2").render(
        **common, out_root="../", report_root="", runs=list(runs.values()), images=images,
        counts=_counts(maps), seconds=sum(r.seconds for r in maps),
        others=_counts_by_kind(r for r in latest.values() if r.kind != "map"),
        evaluation=_evaluation(out), thumbnail=THUMBNAIL_WIDTH, error_chars=INDEX_ERROR_CHARS))


def _counts_by_kind(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """kind → status → count (only the statuses that occur)."""
    kinds: dict[str, Counter] = {}
    for record in records:
        kinds.setdefault(record.kind, Counter())[record.status] += 1
    return {kind: dict(counts) for kind, counts in sorted(kinds.items())}
