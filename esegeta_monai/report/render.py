"""The figure and scene jobs of an output folder, made from its journal.

For every image folder with maps that are ok, the jobs are: one overlay figure per map
(``<image>/figures/<map stem>.png``, with its first plane alone as a thumbnail in
``<image>/figures/thumbs/``), one comparison grid per target with two or more methods
(``<image>/figures/compare_<target>.png``) and one 3D Slicer scene (``<image>/scene.mrml``). Like
maps, each is a job with a key — a digest of the files it shows (scan, maps, prediction) and of
the renderer's version — and a record in the same journal: a rerun skips what is done and intact,
redoes what changed, and a failing figure is recorded (status ``failed`` with its error) without
touching any map. A cohort run makes them per image right after its maps (in the worker that made
them); ``esegeta report OUT`` makes whatever is missing for a whole folder.

Example:
    >>> from esegeta_monai.report.render import render_folder
    >>> records = render_folder("esegeta_out")  # doctest: +SKIP
    >>> sorted({r.kind for r in records})  # doctest: +SKIP
    ['figure', 'scene']
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esegeta_monai.errors import InputError
from esegeta_monai.jobs.atomic import atomic_path
from esegeta_monai.jobs.fingerprint import DigestCache, job_key
from esegeta_monai.jobs.journal import Journal, folder_journal
from esegeta_monai.jobs.record import Record
from esegeta_monai.jobs.resume import intact, is_done

__all__ = ["ImageOutputs", "image_outputs", "render_image", "render_folder", "thumbnail_path", "RENDER_VERSION"]

logger = logging.getLogger(__name__)

#: changes whenever figures or scenes would look different: every figure and scene is redone
RENDER_VERSION = "1"
_MAP_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.png)$")


@dataclass
class ImageOutputs:
    """What one image folder holds, by the journal: its ok maps and its prediction."""

    folder: str
    image: str | None
    maps: list[Record] = field(default_factory=list)
    prediction: Record | None = None

    def scan_digest(self) -> str | None:
        for record in self.maps:
            for entry in record.inputs:
                if entry.get("role") == "image":
                    return entry.get("sha256")
        return None


def image_outputs(latest: Mapping[str, Record], out: str | Path, folders: set[str] | None = None) -> dict[str, ImageOutputs]:
    """The image folders of an output folder (``latest``: the journal's latest record per path),
    each with the maps and the prediction that are ok and intact on disk."""
    images: dict[str, ImageOutputs] = {}
    for path, record in sorted(latest.items()):
        if "/" not in path or not record.ok or record.kind not in ("map", "prediction"):
            continue
        folder = path.split("/", 1)[0]
        if folders is not None and folder not in folders:
            continue
        if not intact(record, out):
            continue
        outputs = images.setdefault(folder, ImageOutputs(folder, record.image))
        if record.kind == "prediction":
            outputs.prediction = record
        else:
            outputs.maps.append(record)
    return {folder: outputs for folder, outputs in images.items() if outputs.maps}


@dataclass
class _Job:
    path: str  #: relative to the output folder
    kind: str  #: figure or scene
    method: str
    target: str
    key: str
    sources: list[Record]
    draw: Callable[[Path], Any]  #: writes the file at the temporary path it is given


def render_image(out: str | Path, journal: Journal, outputs: ImageOutputs, *, run: str | None = None,
                 force: bool = False) -> Iterator[Record]:
    """Make the figures and the scene of one image folder that are not done yet; yield their records."""
    out = Path(out)
    latest = journal.latest_by_path()
    for job in _jobs(out, outputs):
        if not force and is_done(job.path, job.key, latest, out):
            continue
        yield _run_job(out, journal, outputs, job, run)


def thumbnail_path(figure: str) -> str:
    """Where a map figure's thumbnail (its first plane alone, small) is: ``figures/thumbs/<name>``.

    Example:
        >>> thumbnail_path("scan/figures/saliency_argmax1.png")
        'scan/figures/thumbs/saliency_argmax1.png'
    """
    head, _, name = figure.rpartition("/")
    return f"{head}/thumbs/{name}" if head else f"thumbs/{name}"


def render_folder(out: str | Path, *, force: bool = False, run: str | None = None,
                  progress: Callable[[Record], Any] | None = None) -> list[Record]:
    """Make every figure and scene of an output folder that is missing or out of date."""
    journal = folder_journal(out)
    records = []
    for outputs in image_outputs(journal.latest_by_path(), out).values():
        for record in render_image(out, journal, outputs, run=run, force=force):
            records.append(record)
            if progress is not None:
                progress(record)
    return records


# ------------------------------------------------------------------------------------------ jobs
def _jobs(out: Path, outputs: ImageOutputs) -> list[_Job]:
    from esegeta_monai.report.figures import render_comparison, render_map_figure
    from esegeta_monai.report.slicer import write_scene

    scan = _scan_path(outputs)
    if scan is None:
        return []
    scan_digest = DigestCache(e for r in outputs.maps for e in r.inputs).digest(scan)  # re-hashed only if it changed
    prediction = _prediction_file(out, outputs)
    details = _prediction_details(out, outputs)
    common = {"version": RENDER_VERSION, "scan": scan_digest,
              "prediction": outputs.prediction.sha256 if outputs.prediction is not None else None}
    names = {int(k): v.get("name", k) for k, v in (details.get("classes") or {}).items()} if details else None
    jobs = []
    by_target: dict[str, list[Record]] = defaultdict(list)
    for record in outputs.maps:
        by_target[record.target].append(record)
        region = _region_label(record)
        stem = _MAP_SUFFIX.sub("", Path(record.path).name)
        thumbnail = out / thumbnail_path(f"{outputs.folder}/figures/{stem}.png")

        def draw(path, record=record, region=region, thumbnail=thumbnail):
            thumbnail.parent.mkdir(exist_ok=True)
            with atomic_path(thumbnail, ".png") as small:
                render_map_figure(scan, out / record.path, path, prediction=prediction, region_label=region,
                                  title=f"{outputs.folder} — {_target_title(record)}", label=record.method,
                                  classification=_classification(details, record), label_names=names, thumbnail=small)

        jobs.append(_Job(f"{outputs.folder}/figures/{stem}.png", "figure", record.method, record.target,
                         job_key({**common, "figure": "map", "map": record.sha256, "region": region}), [record], draw))
    for target, records in by_target.items():
        if len(records) < 2:
            continue
        region = _region_label(records[0])
        jobs.append(_Job(
            f"{outputs.folder}/figures/compare_{target}.png", "figure", "compare", target,
            job_key({**common, "figure": "compare", "maps": [r.sha256 for r in records], "region": region}), records,
            lambda path, records=records, region=region, target=target: render_comparison(
                scan, [(r.method, out / r.path) for r in records], path, prediction=prediction, region_label=region,
                title=f"{outputs.folder} — {_target_title(records[0])}", label_names=names),
        ))
    maps = [(f"{r.method} {r.target}", out / r.path) for r in outputs.maps]
    jobs.append(_Job(
        f"{outputs.folder}/scene.mrml", "scene", "scene", "all",
        job_key({**common, "scene": [r.sha256 for r in outputs.maps]}), list(outputs.maps),
        lambda path: write_scene(path, scan, maps, prediction=prediction, label_names=names),
    ))
    if outputs.scan_digest() not in (None, scan_digest):  # never a map drawn over another image
        for job in jobs:
            job.draw = functools.partial(_scan_changed, scan)
    return jobs


def _scan_changed(scan: Path, path: Path) -> None:
    raise InputError(f"{scan} changed since its maps were made (its SHA-256 is not the one their records hold), so "
                     "they would be drawn over another image. Fix: run `esegeta explain` again on it (its maps are "
                     "remade), then the figures follow")


def _run_job(out: Path, journal: Journal, outputs: ImageOutputs, job: _Job, run: str | None) -> Record:
    started = time.monotonic()
    final = out / job.path
    inputs = [{"role": "map", "path": r.path, "sha256": r.sha256} for r in job.sources]

    def record(status: str, **fields: Any) -> Record:
        return Record(image=outputs.image, method=job.method, target=job.target, status=status,
                      seconds=time.monotonic() - started, key=job.key, path=job.path, kind=job.kind, run=run,
                      inputs=inputs, **fields)

    try:
        final.parent.mkdir(parents=True, exist_ok=True)

        def write(publish):
            with atomic_path(final, final.suffix, publish) as temporary:
                job.draw(temporary)

        result = journal.publish_written(write, lambda: record("ok", output=str(final)))
        logger.info("%s: %s written (%.1fs)", outputs.folder, job.path.split("/", 1)[1], result.seconds)
        return result
    except Exception as error:  # a figure never costs a map, nor the other figures
        logger.debug("rendering %s failed", job.path, exc_info=True)
        text = f"{type(error).__name__}: {error}"
        logger.error("%s: %s failed — %s", outputs.folder, job.path.split("/", 1)[1], text)
        (out / thumbnail_path(job.path)).unlink(missing_ok=True)  # no picture is left of a figure that is not there
        return journal.record_failure(record("failed", error=text), stale=final)


# --------------------------------------------------------------------------------------- details
def _scan_path(outputs: ImageOutputs) -> Path | None:
    """The input scan of the maps, when it is a file that is still there."""
    if outputs.image and Path(outputs.image).is_file():
        return Path(outputs.image)
    for record in outputs.maps:
        for entry in record.inputs:
            if entry.get("role") == "image" and entry.get("path") and Path(entry["path"]).is_file():
                return Path(entry["path"])
    return None


def _prediction_file(out: Path, outputs: ImageOutputs) -> Path | None:
    record = outputs.prediction
    if record is None or record.path is None or record.path.endswith(".json"):
        return None
    return out / record.path


def _prediction_details(out: Path, outputs: ImageOutputs) -> dict[str, Any]:
    record = outputs.prediction
    if record is None:
        return {}
    if record.report:
        return dict(record.report)
    try:
        return json.loads((out / outputs.folder / "prediction.json").read_text())
    except (OSError, ValueError):
        return {}


def _region_label(record: Record) -> int | None:
    """The class whose predicted region the figure also cuts through (``argmax:C`` targets)."""
    spec = record.target_spec or ""
    kind, _, rest = spec.partition(":")
    if kind == "argmax":
        try:
            return int(rest.split(":", 1)[0])
        except ValueError:
            return None
    return None


def _target_title(record: Record) -> str:
    name = f" ({record.class_name})" if record.class_name else ""
    return f"{record.target_spec or record.target}{name}"


def _classification(details: Mapping[str, Any], record: Record) -> dict[str, Any] | None:
    """The class and score a classifier gave, for a figure's title."""
    if details.get("kind") != "classification":
        return None
    spec = record.target_spec or ""
    kind, _, rest = spec.partition(":")
    target = int(rest) if kind == "class" and rest.isdigit() else int(details.get("predicted", 0))
    key = str(target)
    return {"predicted": details.get("predicted"), "target": target,
            "name": (details.get("names") or {}).get(key, f"class {target}"),
            "predicted_name": (details.get("names") or {}).get(str(details.get("predicted")), ""),
            "score": (details.get("scores") or {}).get(key), "probability": (details.get("probabilities") or {}).get(key)}
