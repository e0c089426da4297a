"""Jobs from inputs × methods × targets: names, keys and the units workers run.

A :class:`Job` is one image, one method with its options and one target of one class. Its output
path (``<image folder>/<method label>_<target name><suffix>``, relative to the output folder) is
unique and stable (:mod:`esegeta_monai.jobs.naming`), and its key
(:func:`~esegeta_monai.jobs.fingerprint.job_key`) digests everything that changes the map: the
image's content, the method's name and every option (defaults filled in; files named in options,
e.g. a label file of ``features``, by content), the target (a mask file by content) and the
run-wide ``common`` parts (bundle, windows, format, version …). A :class:`Unit` holds one image's
jobs: a worker reads and predicts the image once for all of them.

Example:
    >>> from esegeta_monai.jobs.plan import plan_units
    >>> from esegeta_monai.methods.spec import MethodSpec
    >>> units = plan_units(["/no/such/s1/a.nii.gz", "/no/such/s2/a.nii.gz"], [MethodSpec("saliency")], ["argmax:1"],
    ...                    common={"version": "0"}, suffix=".nii.gz")
    >>> [job.path for unit in units for job in unit.jobs]
    ['a__s1/saliency_argmax1.nii.gz', 'a__s2/saliency_argmax1.nii.gz']
    >>> units[0].error is not None   # a missing image: its jobs fail when they run, with this reason
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esegeta_monai.core.targets import TargetSpec, split_targets
from esegeta_monai.jobs.fingerprint import DigestCache, canonical, job_key
from esegeta_monai.jobs.journal import Journal
from esegeta_monai.jobs.naming import image_stem, unique_names
from esegeta_monai.jobs.record import Record
from esegeta_monai.methods import get_method
from esegeta_monai.methods.spec import MethodSpec

__all__ = ["Job", "Unit", "plan_units", "identity_of", "previous_names", "assign_names", "reserve_names"]


#: folder names of an output folder that are not images' (the HTML report's)
RESERVED_FOLDERS = ("report",)


def identity_of(path: str | os.PathLike) -> str:
    """What names an input: its resolved absolute path."""
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class Job:
    """One image × one method (with its options) × one target class."""

    image: str  #: the input as given
    folder: str  #: the image's output folder name
    method: MethodSpec
    target: TargetSpec
    target_name: str  #: the target's unique name in file names
    path: str  #: the output path relative to the output folder
    key: str | None  #: None when an input could not be read while planning (see ``error``)
    error: str | None = None  #: why the job cannot run, found while planning
    kind: str = "map"  #: ``map``, or ``prediction`` (the image's label map: every class, no method)

    def record(self, status: str, seconds: float = 0.0, **fields: Any) -> Record:
        """A :class:`~esegeta_monai.jobs.record.Record` of this job."""
        return Record(image=self.image, method=self.method.label, target=self.target_name, status=status, seconds=seconds,
                      key=self.key, path=self.path, method_name=self.method.name, options=canonical(self.method.options),
                      target_spec=None if self.kind == "prediction" else self.target.text, kind=self.kind, **fields)


@dataclass
class Unit:
    """One image and its jobs, run together by one worker."""

    image: str
    folder: str
    jobs: list[Job]
    inputs: list[dict[str, Any]] = field(default_factory=list)  #: digests of the files read (for the journal)
    error: str | None = None  #: the image cannot be read: every job fails with this
    prediction: Job | None = None  #: the prediction's label map to write, when asked for and not done
    files: tuple[tuple[str, str], ...] = ()  #: a case of several files: its ``(key, file)`` pairs (``image`` is the first)

    @property
    def pending(self) -> int:
        return len(self.jobs)


def previous_names(entries: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """The image folder names and target names earlier runs gave, from journal entries (their
    maps' records and their ``names`` reservations): ``({image identity: folder}, {target spec:
    target name})``."""
    folders, targets = {}, {}
    for entry in entries:
        if entry.get("type") == "names":
            folders.update(entry.get("folders") or {})
            targets.update(entry.get("targets") or {})
        elif entry.get("type") == "record":
            path = entry.get("path") or ""
            if entry.get("image") and "/" in path:
                folders[identity_of(entry["image"])] = path.split("/", 1)[0]
            if entry.get("target_spec"):
                targets[entry["target_spec"]] = entry.get("target")
    return folders, targets


def _target_specs(targets: Sequence[str]) -> dict[str, TargetSpec]:
    """Resolved one-class spec text → spec (``argmax:1,2`` gives two; a repeat counts once)."""
    specs: dict[str, TargetSpec] = {}
    for text in targets:
        for spec in split_targets(text):
            specs.setdefault(spec.resolved().text, spec.resolved())
    return specs


def assign_names(
    images: Sequence[str],
    targets: Sequence[str],
    previous_folders: Mapping[str, str] | None = None,
    previous_targets: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Folder names of ``images`` (by :func:`identity_of`) and names of ``targets`` (by resolved
    spec), keeping the names earlier runs gave (:func:`~esegeta_monai.jobs.naming.unique_names`)."""
    folders = unique_names({identity_of(i): image_stem(i) for i in images}, previous_folders, reserved=RESERVED_FOLDERS)
    names = unique_names({identity: spec.name for identity, spec in _target_specs(targets).items()}, previous_targets)
    return folders, names


def reserve_names(journal: Journal, images: Sequence[str], targets: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`assign_names` against every name the journal knows, with the new names appended to
    it as a ``names`` entry in the same locked step: two runs planning into one folder at the same
    moment give an image the same folder, and never give two images one folder.

    Example:
        >>> import tempfile
        >>> from esegeta_monai.jobs.journal import Journal
        >>> journal = Journal(tempfile.mkdtemp())
        >>> reserve_names(journal, ["/d/s1/a.nii.gz"], ["argmax:1"])[0]
        {'/d/s1/a.nii.gz': 'a'}
        >>> reserve_names(journal, ["/d/s1/a.nii.gz", "/d/s2/a.nii.gz"], ["argmax:1"])[0]["/d/s2/a.nii.gz"]
        'a__s2'
    """
    def choose(entries):
        previous_folders, previous_targets = previous_names(entries)
        folders, names = assign_names(images, targets, previous_folders, previous_targets)
        new_folders = {k: v for k, v in folders.items() if previous_folders.get(k) != v}
        new_targets = {k: v for k, v in names.items() if previous_targets.get(k) != v}
        entry = {"type": "names", "folders": new_folders, "targets": new_targets} if new_folders or new_targets else None
        return (folders, names), entry

    return journal.reserve(choose)


def _file_options(options: Mapping[str, Any]) -> dict[str, str]:
    """Options that name an existing file (e.g. ``features: organs.nii.gz``): option → path."""
    return {k: v for k, v in options.items() if isinstance(v, str) and v and os.path.isfile(v)}


def plan_units(
    images: Sequence[str],
    methods: Sequence[MethodSpec],
    targets: Sequence[str],
    common: Mapping[str, Any],
    suffix: str,
    previous_folders: Mapping[str, str] | None = None,
    previous_targets: Mapping[str, str] | None = None,
    digests: DigestCache | None = None,
    owned: Callable[[int], bool] | None = None,
    image_digests: Mapping[str, str] | None = None,
    prediction_suffix: str | None = None,
    case_files: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> list[Unit]:
    """The units of a run, one per image, in the order of ``images``.

    Args:
        images: input files (duplicates removed by the caller).
        methods: method specs with unique labels (:func:`~esegeta_monai.methods.spec.unique_specs`).
        targets: target specs (``argmax:1,2`` gives two targets); repeats run once.
        common: key parts every job shares (bundle, windows, format, version …).
        suffix: the maps' file suffix, e.g. ``.nii.gz``.
        previous_folders, previous_targets: names given by earlier runs (:func:`reserve_names`;
            targets by their resolved one-class spec, as records hold it).
        digests: a cache of file digests (e.g. seeded from the journal).
        owned: which units (by index) this process runs; the others are named but not hashed
            (torchrun ranks each hash their own share).
        image_digests: digests of inputs that are not files (e.g. an evaluator's in-memory batch),
            by the name given in ``images``.
        prediction_suffix: also plan each image's prediction (a label map,
            ``<image folder>/prediction<suffix>``; method ``prediction``, kind ``prediction``).
        case_files: for the images that are cases of several files, their ``(key, file)`` pairs:
            every file is digested into the jobs' keys (role ``image:<key>`` in ``Unit.inputs``).
    """
    digests = digests or DigestCache()
    folders, target_names = assign_names(images, targets, previous_folders, previous_targets)
    target_specs = _target_specs(targets)
    resolved = [(spec, {**get_method(spec.name).validate(spec.options)}) for spec in methods]

    units = []
    for index, image in enumerate(images):
        if owned is not None and not owned(index):
            continue
        folder = folders[identity_of(image)]
        files = tuple((case_files or {}).get(image, ()))
        unit = Unit(image, folder, [], files=files)
        try:
            if image_digests and image in image_digests:
                image_digest = image_digests[image]
            elif files:
                entries = [digests.entry(path) for _, path in files]
                unit.inputs.extend({"role": f"image:{key}", **entry} for (key, _), entry in zip(files, entries))
                image_digest = job_key({"case": [[key, entry["sha256"]] for (key, _), entry in zip(files, entries)]})
            else:
                entry = digests.entry(image)
                unit.inputs.append({"role": "image", **entry})
                image_digest = entry["sha256"]
        except OSError as error:
            image_digest = None
            name = getattr(error, "filename", None) or image
            unit.error = f"{name}: cannot read the image file ({error.strerror or error}); check the path"
        for identity, target in target_specs.items():
            target_part, target_error = _target_part(target, digests, unit)
            for method, options in resolved:
                option_files, option_error = _option_files(options, digests, unit)
                error = unit.error or target_error or option_error
                key = None if error else job_key({
                    **common, "image": image_digest, "method": method.name, "options": options,
                    "option_files": option_files, "target": target_part,
                })
                path = f"{folder}/{method.label}_{target_names[identity]}{suffix}"
                unit.jobs.append(Job(image, folder, method, target, target_names[identity], path, key, error))
        if prediction_suffix is not None:
            key = None if unit.error else job_key({**common, "image": image_digest, "output": "prediction"})
            unit.prediction = Job(image, folder, MethodSpec("prediction"), TargetSpec("argmax", 0), "labels",
                                  f"{folder}/prediction{prediction_suffix}", key, unit.error, kind="prediction")
        units.append(unit)
    return units


def _target_part(target: TargetSpec, digests: DigestCache, unit: Unit) -> tuple[dict[str, Any], str | None]:
    if not target.mask_file:
        return {"kind": target.kind, "class": target.class_index, "extra": target.extra}, None
    try:
        entry = digests.entry(target.mask_file)
    except OSError as error:
        return {}, f"mask file {target.mask_file} cannot be read ({error.strerror or error}); check the target spec"
    if not any(i.get("path") == entry["path"] for i in unit.inputs):
        unit.inputs.append({"role": "mask", **entry})
    return {"kind": target.kind, "class": target.class_index, "mask": entry["sha256"]}, None


def _option_files(options: Mapping[str, Any], digests: DigestCache, unit: Unit) -> tuple[dict[str, str], str | None]:
    files = {}
    for option, path in _file_options(options).items():
        try:
            entry = digests.entry(path)
        except OSError as error:
            return {}, f"{option}: {path} cannot be read ({error.strerror or error})"
        files[option] = entry["sha256"]
        if not any(i.get("path") == entry["path"] for i in unit.inputs):
            unit.inputs.append({"role": option, **entry})
    return files, None
