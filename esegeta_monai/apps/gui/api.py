"""The GUI's JSON API, under ``/api`` (the pages use it; scripts may too, with the token).

=======  ==============================  ======================================================
GET      /api/info                       version, roots, devices, limits, target kinds
GET      /api/roots                      the readable folders: ``[{"id", "path", "name"}]``
GET      /api/methods                    the registry with parameter tables (= ``esegeta methods --json``)
GET      /api/metrics                    the metric catalogue (= ``esegeta evaluate --list-metrics``)
GET      /api/bundles                    the bundles under the roots, with their metadata
GET      /api/bundles/{id}               one bundle
GET      /api/bundles/{id}/layers        its network's layers: ``[{"name", "type", "shape"}]``
GET      /api/files?dir={id}             a folder's entries (no ``dir``: the roots)
GET      /api/file/{id}                  a file's bytes (``?download=1``: as an attachment)
POST     /api/uploads?name={name}        the raw body stored under ``OUT/uploads/`` → ``{"id", "name"}``
POST     /api/jobs                       an explain job (validated first) → 201 ``{"id"}``; ``images``
                                         (file ids), or one ``case`` of several files:
                                         ``[[key, file id], …]`` (a repeated key is stacked)
GET      /api/jobs                       every job, the newest first
GET      /api/jobs/{id}                  status, progress, records, outputs, report, log tail
GET      /api/jobs/{id}/events           server-sent events: ``progress`` (as GET), then ``end``
DELETE   /api/jobs/{id}                  cancel → ``{"id", "status": "cancelled"}``
POST     /api/jobs/{id}/evaluate         ``esegeta evaluate`` on a job's bundle, images and methods
=======  ==============================  ======================================================

Every error is ``{"error": "…"}`` naming the thing and the fix: 400 invalid request, 403 a path
refused, 404 missing, 409 a job that cannot be cancelled, 413 an upload too large, 415 an upload
that is not an image. Paths only ever enter as file ids (:mod:`esegeta_monai.apps.gui.paths`):
images, mask targets and method options that name files.

Example:
    >>> from esegeta_monai.apps.gui.api import method_entries
    >>> method_entries([{"name": "integrated_gradients", "options": {"n_steps": 4}}, "saliency"], lambda v: v)
    [{'integrated_gradients': {'n_steps': 4}}, 'saliency']
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.responses import JSONResponse as _JSONResponse
from starlette.routing import Route

from esegeta_monai import __version__
from esegeta_monai.apps.gui.bundles import BundleCatalog
from esegeta_monai.apps.gui.jobs import FINAL, Job, JobError, JobManager, log_tail
from esegeta_monai.apps.gui.paths import SNIFF_BYTES, FileIdError, Roots, check_upload, upload_name
from esegeta_monai.errors import ConfigError, EsegetaError

__all__ = ["GuiState", "routes", "method_entries", "EVENT_EVERY", "JOB_KEYS"]

#: seconds between two looks at a job's journal for its event stream
EVENT_EVERY = 0.5
#: seconds between two comment lines that keep an idle event stream open
KEEPALIVE_EVERY = 15.0
#: the keys of POST /api/jobs
JOB_KEYS = ("bundle", "images", "case", "methods", "targets", "device", "amp", "timeout", "layer", "window", "format",
            "channel_reduce", "figures", "allow_empty", "nan_policy", "local")
#: the keys of POST /api/jobs/{id}/evaluate
EVALUATE_KEYS = ("metrics", "methods", "labels", "samples", "steps", "seed", "figures")
_FILE_ID = re.compile(r"^(\d+|out):")
#: a key of a case's file: a name as ``--image KEY=FILE`` takes it
_CASE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEDIA = {".nii.gz": "application/octet-stream", ".nii": "application/octet-stream", ".nrrd": "application/octet-stream",
          ".mha": "application/octet-stream", ".gz": "application/octet-stream", ".html": "text/html; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".json": "application/json",
          ".csv": "text/csv; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".jsonl": "text/plain; charset=utf-8",
          ".yaml": "text/plain; charset=utf-8", ".mrml": "application/xml", ".ctbl": "text/plain; charset=utf-8",
          ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
#: served files that a browser would run as a page get no scripts
_NO_SCRIPTS = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which JSON does not have) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class JSONResponse(_JSONResponse):
    """Strict JSON (a record's NaN, e.g. a surrogate's R², becomes null)."""

    def render(self, content: Any) -> bytes:
        return super().render(finite(content))


@dataclass
class GuiState:
    """What the routes share: the roots, the bundles, the jobs, the limits."""

    roots: Roots
    jobs: JobManager
    token: str
    max_upload_mb: float = 512
    bundles: BundleCatalog = field(init=False)

    def __post_init__(self):
        self.bundles = BundleCatalog(self.roots)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _state(request: Request) -> GuiState:
    return request.app.state.gui


def error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise ConfigError(f"the request body is not JSON ({error}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ConfigError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _refuse_unknown(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ConfigError(f"{what}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")


# ------------------------------------------------------------------------------------ read-only


async def info(request: Request) -> JSONResponse:
    from esegeta_monai.core.targets import TARGET_KINDS

    gui = _state(request)
    return JSONResponse({"version": __version__, "roots": [r.as_dict() for r in gui.roots.roots],
                         "devices": await run_in_threadpool(_devices), "max_upload_mb": gui.max_upload_mb,
                         "max_parallel": gui.jobs.max_parallel, "target_kinds": TARGET_KINDS})


def _devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


async def roots(request: Request) -> JSONResponse:
    return JSONResponse([r.as_dict() for r in _state(request).roots.roots])


async def methods(request: Request) -> JSONResponse:
    from esegeta_monai.methods import method_table

    return JSONResponse(await run_in_threadpool(method_table))


async def bundles(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(_state(request).bundles.list))


async def bundle(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(_state(request).bundles.payload, request.path_params["bundle_id"]))


async def layers(request: Request) -> JSONResponse:
    gui, bundle_id = _state(request), request.path_params["bundle_id"]
    try:
        rows = await run_in_threadpool(gui.bundles.layers, bundle_id)
    except FileIdError:
        raise
    except Exception as error:  # building the network runs the bundle's code: any error is the bundle's
        return error_response(f"the layers of bundle {bundle_id} cannot be listed: {type(error).__name__}: {error}", 400)
    return JSONResponse(rows)


async def files(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(_state(request).roots.listing, request.query_params.get("dir")))


def _media_type(name: str) -> str:
    lower = name.lower()
    for suffix, media in _MEDIA.items():
        if lower.endswith(suffix):
            return media
    return "application/octet-stream"


async def file(request: Request) -> Response:
    path = _state(request).roots.resolve(request.path_params["file_id"], kind="file")
    media = _media_type(path.name)
    headers = {"Cache-Control": "no-cache"}
    if media.startswith(("text/html", "image/svg")):
        headers["Content-Security-Policy"] = _NO_SCRIPTS
    download = request.query_params.get("download") not in (None, "", "0", "false")
    return FileResponse(path, media_type=media, headers=headers, filename=path.name if download else None)


# ---------------------------------------------------------------------------------------- uploads


def _size(count: int) -> str:
    """``count`` bytes for a reader: ``512 MiB``, ``10 KiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.4g} {unit}"
    return f"{count} bytes"


async def upload(request: Request) -> JSONResponse:
    """Store the raw body as ``OUT/uploads/<random>/<name>``: size-limited, type-checked by its header."""
    gui = _state(request)
    name = upload_name(request.query_params.get("name"))
    limit = gui.max_upload_bytes
    too_large = (f"{name}: the upload is larger than the limit of {_size(limit)}; start the GUI with a "
                 "larger --max-upload-mb, or give the file's folder with --root instead of uploading it")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return error_response(too_large, 413)
    folder = gui.roots.out / "uploads" / secrets.token_hex(6)
    folder.mkdir(parents=True)
    partial, target = folder / f".{name}.part", folder / name
    size, head, kind = 0, b"", None
    try:
        with open(partial, "wb") as stream:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return error_response(too_large, 413)
                if kind is None:
                    head += chunk[: SNIFF_BYTES]
                    if len(head) >= SNIFF_BYTES:
                        kind = check_upload(name, head)
                stream.write(chunk)
        if size == 0:
            return error_response(f"{name}: the upload is empty; send the file's bytes as the request body", 400)
        kind = kind or check_upload(name, head)
        os.replace(partial, target)
    finally:
        if not target.exists():
            partial.unlink(missing_ok=True)
            folder.rmdir()
    return JSONResponse({"id": gui.roots.file_id(target), "name": name, "size": size, "kind": kind}, status_code=201)


# ------------------------------------------------------------------------------------------- jobs


def _file_value(value: Any, roots: Roots, what: str) -> Any:
    """A file id in ``value`` as the absolute path it resolves to; a path given as text refused."""
    if isinstance(value, list):
        return [_file_value(v, roots, what) for v in value]
    if not isinstance(value, str):
        return value
    if _FILE_ID.match(value):
        return str(roots.resolve(value, kind="file"))
    if "/" in value or "\\" in value or value.startswith("~") or "\0" in value:
        raise FileIdError(f"{what}: {value!r} looks like a path; files are named by their id (e.g. '0:labels/organs.nii.gz', "
                          "from GET /api/files or an upload)", 400)
    return value


def method_entries(entries: Any, resolve: Callable[[Any], Any]) -> list:
    """The ``methods`` of a job request — names, or ``{"name", "options", "as"}`` — as run config
    entries, with ``resolve`` applied to every option value."""
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("methods: give a non-empty list of methods, e.g. [{\"name\": \"saliency\", \"options\": {}}]")
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"methods: cannot read {entry!r}; each method is a name or {{\"name\": …, \"options\": {{…}}}}")
        _refuse_unknown(entry, ("name", "options", "as"), f"method {entry['name']!r}")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"method {entry['name']!r}: options must be an object of keyword → value, got {options!r}")
        options = {k: resolve(v) for k, v in options.items()}
        if entry.get("as"):
            options["as"] = entry["as"]
        out.append({entry["name"]: options} if options else entry["name"])
    return out


def _prepared(entry: Any, get_method, layer: str | None) -> Any:
    """A method entry without the options set to None whose default is None (a form's empty
    field), and with the job's ``layer`` when the method takes one and was given none (as
    ``esegeta explain --layer`` does)."""
    name, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
    try:
        params = get_method(name).params
    except EsegetaError:  # an unknown name: the run config's validation names it
        return entry
    kept = {k: v for k, v in options.items() if not (v is None and k in params and params[k].default is None)}
    if layer and "layer" in params and kept.get("layer") is None:
        kept["layer"] = layer
    return {name: kept} if kept else name


def _target_value(target: Any, roots: Roots) -> Any:
    """A ``mask:C:<file id>`` target with the mask's path; other targets as they are."""
    if isinstance(target, str) and target.strip().lower().startswith("mask:"):
        kind, _, rest = target.partition(":")
        classes, _, mask = rest.partition(":")
        return f"{kind}:{classes}:{_file_value(mask, roots, f'target {target!r}')}" if mask else target
    return target


def case_images(case: Any, bundle, roots: Roots) -> list[str]:
    """A case of several files, ``[[key, file id], …]``, as the ``KEY=PATH`` values of the run
    config's ``images`` (which ``esegeta explain`` reads as one case, as ``--image KEY=FILE``):
    every file through the roots' resolver, the keys and grids checked against the bundle
    (:func:`~esegeta_monai.monai.io.images.case_data`) before the job starts."""
    from esegeta_monai.monai.io.images import case_data

    if not isinstance(case, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p)
                                             for p in case):
        raise ConfigError(f"job: case must be a list of [key, file id] pairs, e.g. [[\"image\", \"0:t1.nii.gz\"], "
                          f"[\"image\", \"0:t2.nii.gz\"]], got {case!r}")
    bad = [key for key, _ in case if not _CASE_KEY.match(key)]
    if bad:
        raise ConfigError(f"job: case: {bad[0]!r} is not a key (letters, digits and _, as the bundle's LoadImaged names them)")
    pairs = [(key, str(roots.resolve(file_id, kind="file"))) for key, file_id in case]
    case_data(pairs, bundle.preprocessing, bundle.image_key, "job: case")
    return [f"{key}={path}" for key, path in pairs]


def explain_config(body: dict[str, Any], gui: GuiState) -> tuple[dict[str, Any], int, Any]:
    """The run config mapping of a job request (paths resolved, validated with
    :meth:`~esegeta_monai.apps.config.RunConfig.from_mapping` and against the bundle), the number
    of maps it plans, and the bundle."""
    from esegeta_monai.apps.cohort import check_against_bundle, default_targets, resolve_device
    from esegeta_monai.apps.config import RunConfig
    from esegeta_monai.core.targets import split_targets
    from esegeta_monai.methods import get_method

    _refuse_unknown(body, JOB_KEYS, "job")
    if not isinstance(body.get("bundle"), str):
        raise ConfigError("job: bundle: give a bundle id from GET /api/bundles, e.g. \"1:vessel_mra_demo\"")
    bundle = gui.bundles.bundle(body["bundle"])
    images = body.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ConfigError(f"job: images must be a list of file ids, got {images!r}")
    images = list(dict.fromkeys(str(gui.roots.resolve(i, kind="file")) for i in images))
    cases = 1 if body.get("case") else len(images or bundle.samples)
    if body.get("case"):
        if images:
            raise ConfigError("job: give either images (one file each) or one case of several files, not both")
        images = case_images(body["case"], bundle, gui.roots)
    elif not images and not bundle.samples:
        raise ConfigError(f"job: bundle {body['bundle']} has no sample image; pick scans under the roots or upload them")
    entries = method_entries(body.get("methods"), lambda v: _file_value(v, gui.roots, "method option"))
    targets = body.get("targets") or []
    if not isinstance(targets, list):
        raise ConfigError(f"job: targets must be a list like [\"argmax:1\"], got {targets!r}")
    layer = body.get("layer") or None  # a form's empty field: no layer
    if layer is not None and (not isinstance(layer, str) or not layer):
        raise ConfigError(f"job: layer must be a module name (GET /api/bundles/{{id}}/layers), got {layer!r}")
    entries = [_prepared(e, get_method, layer) for e in entries]
    mapping: dict[str, Any] = {"bundle": str(bundle.root), "images": images, "methods": entries,
                               "targets": [_target_value(t, gui.roots) for t in targets]}
    for key in ("device", "amp", "timeout", "window", "format", "channel_reduce", "figures", "allow_empty", "nan_policy", "local"):
        if body.get(key) is not None:
            mapping[key] = body[key]
    config = RunConfig.from_mapping(mapping, source="job")
    resolve_device(config.device)
    targets = list(config.targets) or default_targets(bundle)
    check_against_bundle(config, bundle, targets, config.window_settings(bundle.window))
    planned = cases * len(config.methods) * sum(len(split_targets(t)) for t in targets)
    return mapping, planned, bundle


async def create_job(request: Request) -> JSONResponse:
    gui = _state(request)
    body = await _json_body(request)
    mapping, planned, bundle = await run_in_threadpool(explain_config, body, gui)
    job_id, folder = gui.jobs.reserve()
    mapping["out"] = str(folder)
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    arguments = ["explain", "--config", str(config_path), "--out", str(folder), "--no-progress"]
    job = gui.jobs.submit(job_id, "explain", arguments, planned=planned, bundle=body["bundle"],
                          request={**body, "bundle_name": str(bundle.metadata.get("name") or bundle.root.name)})
    return JSONResponse({"id": job.id, "status": job.status}, status_code=201)


async def metrics(request: Request) -> JSONResponse:
    """The metric catalogue (``esegeta evaluate --list-metrics``): name, family, direction, cost,
    reference, options, whether it needs a label, a plain summary."""
    from esegeta_monai.evaluation import METRICS
    from esegeta_monai.evaluation.catalogue import FAMILIES

    listed = sorted(METRICS.values(), key=lambda m: FAMILIES.index(m.family))
    return JSONResponse({"families": list(FAMILIES), "metrics": [m.describe() for m in listed]})


async def evaluate_job(request: Request) -> JSONResponse:
    """``esegeta evaluate`` with a job's bundle, images, methods (names: their options are not
    passed) and first target, as a new job of kind ``evaluate``."""
    from esegeta_monai.apps.evaluate import METRICS

    gui = _state(request)
    parent = gui.jobs.get(request.path_params["job_id"])
    if parent.kind != "explain":
        raise JobError(f"job {parent.id} is an {parent.kind} job; evaluate an explain job", 409)
    body = await _json_body(request)
    _refuse_unknown(body, EVALUATE_KEYS, "evaluate")
    metrics = body.get("metrics") or ["infidelity", "sensitivity", "deletion", "insertion"]
    unknown = [m for m in metrics if m not in METRICS] if isinstance(metrics, list) else [metrics]
    if unknown:
        raise ConfigError(f"evaluate: unknown metric {unknown[0]!r}; metrics: {', '.join(METRICS)}")
    mapping = yaml.safe_load((gui.jobs.folder(parent.id) / "run.yaml").read_text())
    bundle = await run_in_threadpool(gui.bundles.bundle, parent.bundle)
    names = body.get("methods") or list(dict.fromkeys(next(iter(e)) if isinstance(e, dict) else e for e in mapping["methods"]))
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"evaluate: methods must be a list of method names, got {names!r}")
    labels = [str(gui.roots.resolve(i, kind="file")) for i in body.get("labels") or []]
    needing = [m for m in metrics if METRICS[m].needs_label]
    if needing and not labels:
        raise ConfigError(f"evaluate: {', '.join(needing)} need(s) a label file per image: give \"labels\": [file ids]")
    job_id, folder = gui.jobs.reserve()
    arguments = ["evaluate", "--bundle", mapping["bundle"], "--methods", ",".join(names), "--metrics", ",".join(metrics),
                 "--out", str(folder)]
    arguments += [a for image in mapping.get("images") or [] for a in ("--image", image)]
    arguments += [a for label in labels for a in ("--label", label)]
    target = (mapping.get("targets") or [None])[0]
    arguments += ["--target", target] if target else []
    arguments += ["--layer", parent.request["layer"]] if parent.request.get("layer") else []
    for key in ("samples", "steps", "seed"):
        if body.get(key) is not None:
            if not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < 0:
                raise ConfigError(f"evaluate: {key} must be an integer ≥ 0, got {body[key]!r}")
            arguments += [f"--{key}", str(body[key])]
    arguments += [] if body.get("figures", True) else ["--no-figures"]
    job = gui.jobs.submit(job_id, "evaluate", arguments, bundle=parent.bundle, parent=parent.id,
                          request={**body, "metrics": metrics, "methods": names,
                                   "bundle_name": str(bundle.metadata.get("name") or bundle.root.name)})
    return JSONResponse({"id": job.id, "status": job.status}, status_code=201)


def _with_files(record: dict[str, Any], folder: Path, roots: Roots) -> dict[str, Any]:
    path = folder / record["path"] if record.get("path") else None
    record["file"] = roots.file_id(path) if path is not None and record["status"] == "ok" and path.is_file() else None
    image = record.get("image")
    record["image_file"] = roots.file_id(image) if isinstance(image, str) and os.path.isfile(image) else None
    return record


def job_summary(job: Job, gui: GuiState) -> dict[str, Any]:
    """A job as the job list shows it."""
    request = job.request
    return {"id": job.id, "kind": job.kind, "status": job.status, "created": job.created, "started": job.started,
            "finished": job.finished, "bundle": job.bundle, "bundle_name": request.get("bundle_name"),
            "methods": [m if isinstance(m, str) else m.get("as") or m.get("name") for m in request.get("methods") or []],
            "targets": request.get("targets") or [], "parent": job.parent, "pid": job.pid,
            "progress": gui.jobs.progress(job), "error": job.error}


def job_payload(job: Job, gui: GuiState) -> dict[str, Any]:
    """A job with its records (each map's ``file`` id and its input's ``image_file`` id), other
    outputs, report, files and log tail (and an evaluation's tables)."""
    folder = gui.jobs.folder(job.id)
    maps, outputs = gui.jobs.records(job)
    report = folder / "report" / "index.html"
    report_id = gui.roots.file_id(report) if report.is_file() else None
    listed = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
    payload = {
        **job_summary(job, gui), "returncode": job.returncode, "request": job.request,
        "records": [_with_files(r, folder, gui.roots) for r in maps],
        "outputs": [_with_files(r, folder, gui.roots) for r in outputs],
        "report": report_id, "report_url": f"/api/file/{report_id}" if report_id else None,
        "files": [{"id": gui.roots.file_id(p), "name": p.name, "size": p.stat().st_size} for p in listed],
        "log_tail": log_tail(folder),
    }
    if job.kind == "evaluate":
        payload["evaluation"] = _evaluation(folder)
    return payload


def _evaluation(folder: Path) -> dict[str, Any] | None:
    try:
        rows = json.loads((folder / "evaluation.json").read_text())["rows"]
        ranking = json.loads((folder / "ranking.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    return {"rows": rows, "ranking": ranking}


async def list_jobs(request: Request) -> JSONResponse:
    gui = _state(request)
    return JSONResponse(await run_in_threadpool(lambda: [job_summary(j, gui) for j in gui.jobs.jobs()]))


async def get_job(request: Request) -> JSONResponse:
    gui = _state(request)
    job = gui.jobs.get(request.path_params["job_id"])
    return JSONResponse(await run_in_threadpool(job_payload, job, gui))


async def cancel_job(request: Request) -> JSONResponse:
    gui = _state(request)
    job = await run_in_threadpool(gui.jobs.cancel, request.path_params["job_id"])
    return JSONResponse({"id": job.id, "status": job.status})


async def job_events(request: Request) -> Response:
    """``progress`` events (the job as GET /api/jobs/{id} gives it) whenever it changes, every
    :data:`EVENT_EVERY` seconds at most, then one ``end`` event when the job has ended."""
    gui = _state(request)
    job = gui.jobs.get(request.path_params["job_id"])

    async def stream():
        last, quiet_since = None, time.monotonic()
        while True:
            payload = await run_in_threadpool(job_payload, job, gui)
            text = json.dumps(finite(payload), allow_nan=False)
            if text != last:
                last, quiet_since = text, time.monotonic()
                yield f"event: progress\ndata: {text}\n\n"
            elif time.monotonic() - quiet_since > KEEPALIVE_EVERY:
                quiet_since = time.monotonic()
                yield ": still running\n\n"
            if payload["status"] in FINAL:
                yield f"event: end\ndata: {json.dumps({'id': job.id, 'status': payload['status']})}\n\n"
                return
            await asyncio.sleep(EVENT_EVERY)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def routes() -> list[Route]:
    return [
        Route("/api/info", info),
        Route("/api/roots", roots),
        Route("/api/methods", methods),
        Route("/api/metrics", metrics),
        Route("/api/bundles", bundles),
        Route("/api/bundles/{bundle_id:path}/layers", layers),
        Route("/api/bundles/{bundle_id:path}", bundle),
        Route("/api/files", files),
        Route("/api/file/{file_id:path}", file),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/events", job_events),
        Route("/api/jobs/{job_id}/evaluate", evaluate_job, methods=["POST"]),
    ]


def exception_handlers() -> dict:
    """Errors as ``{"error": …}`` with their status: refused paths, jobs, invalid requests."""

    async def status_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(str(error), getattr(error, "status", 400))

    async def invalid(request: Request, error: Exception) -> JSONResponse:
        return error_response(str(error), 400)

    return {FileIdError: status_error, JobError: status_error, EsegetaError: invalid}
