"""The images of a run: files and globs, lists (a MONAI datalist, a CSV, a text file) and folders.

``--image`` takes files and glob patterns (``scans/*.nii.gz``, also quoted so the shell leaves
it); ``--images`` takes a list: a MONAI datalist JSON (``{"testing": [{"image": …, "label": …}]}``
or a plain list of such entries or of paths), a CSV with an ``image`` column (and an optional
``label``), a text file with one path per line, or a folder (every image file in it, sorted, but
for files named like labels — ``*_label``, ``*_seg``, ``*_mask``, ``*_gt`` — which are left out
with a message; name them with ``--image`` to explain them).
Relative paths in a list are relative to the list's folder, as MONAI's
``load_decathlon_datalist`` reads them. An image listed twice runs once (reported once).

A case made of several files (BraTS: four MRI sequences stacked as channels; several CT phases
under their own keys) is given as ``KEY=FILE`` pairs: on the command line every ``--image
KEY=FILE`` forms one case (a key given several times is a list, stacked by ``LoadImaged`` in that
order); in a datalist an entry's ``image`` may be a list and other keys may name files; in a CSV,
a cell may list files separated by ``;`` and other columns may name files. The keys are checked
against the bundle's ``LoadImaged`` when the case is read.

Example:
    >>> import json, pathlib, tempfile
    >>> from esegeta_monai.apps.inputs import collect_inputs
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.nii.gz", "a.nii.gz"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> _ = (folder / "list.json").write_text(json.dumps({"testing": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]}))
    >>> [pathlib.Path(i.image).name for i in collect_inputs([str(folder / "b.nii.gz")], [str(folder / "list.json")])]
    ['b.nii.gz', 'a.nii.gz']
    >>> [pathlib.Path(i.image).name for i in collect_inputs([], [str(folder)])]
    ['a.nii.gz', 'b.nii.gz']
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esegeta_monai.errors import ConfigError
from esegeta_monai.jobs.naming import IMAGE_SUFFIXES, image_stem
from esegeta_monai.jobs.plan import identity_of

__all__ = ["ImageInput", "collect_inputs", "read_image_list", "expand_patterns", "DATALIST_SECTIONS"]

logger = logging.getLogger(__name__)

#: sections of a MONAI datalist tried in this order when none is named
DATALIST_SECTIONS = ("testing", "test", "validation", "training")
_GLOB_CHARS = set("*?[")
#: a folder's files whose stem ends with one of these are labels, not scans
LABEL_ENDINGS = ("label", "labels", "seg", "mask", "gt")


@dataclass(frozen=True)
class ImageInput:
    """One image of a run and, when a list gives one, its label (ground truth) file.

    ``files`` holds the ``(key, file)`` pairs of a case made of several files, in order (empty for a
    one-file case); ``image`` is then its first file, which names the case and its outputs.
    """

    image: str
    label: str | None = None
    files: tuple[tuple[str, str], ...] = ()

    @classmethod
    def case(cls, pairs, label: str | None = None) -> ImageInput:
        """A case from ``(key, file)`` pairs; a single ``image`` file is a plain input."""
        pairs = tuple((str(k), str(v)) for k, v in pairs)
        if not pairs:
            raise ConfigError("a case needs at least one file")
        if len(pairs) == 1 and pairs[0][0] == "image":
            return cls(pairs[0][1], label)
        first = next((v for k, v in pairs if k == "image"), pairs[0][1])
        return cls(first, label, pairs)


_PAIR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


def split_pairs(paths: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``--image`` values as plain paths and ``KEY=FILE`` pairs (a value that is an existing path
    is a path, even with ``=`` in its name)."""
    plain, pairs = [], []
    for value in paths:
        found = _PAIR.match(value)
        if found and not os.path.exists(value):
            pairs.append((found.group(1), os.path.expanduser(found.group(2))))
        else:
            plain.append(value)
    return plain, pairs


def expand_patterns(paths: Sequence[str]) -> list[str]:
    """Files as given; a path that does not exist but holds glob characters is expanded
    (sorted); a pattern that matches nothing is an error that names it."""
    expanded = []
    for path in paths:
        if not os.path.exists(path) and _GLOB_CHARS & set(path):
            matches = sorted(glob.glob(os.path.expanduser(path), recursive=True))
            if not matches:
                raise ConfigError(f"--image {path!r} matches no file; check the pattern and the folder")
            expanded.extend(matches)
        else:
            expanded.append(path)
    return expanded


def _relative_to(base: Path, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else base / path)


def _datalist_entries(payload, source: Path, section: str | None) -> list:
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        raise ConfigError(f"{source}: a datalist is a JSON list or an object with lists such as 'testing'")
    if section is not None:
        if section not in payload:
            raise ConfigError(f"{source}: no section {section!r}; it has: {', '.join(map(str, payload))}")
        return payload[section]
    for name in DATALIST_SECTIONS:
        if isinstance(payload.get(name), list):
            return payload[name]
    lists = [k for k, v in payload.items() if isinstance(v, list)]
    raise ConfigError(f"{source}: none of the sections {', '.join(DATALIST_SECTIONS)}; it has {lists or 'no list'}. "
                      "Fix: name one with --datalist-key")


def _looks_like_label(path: Path) -> bool:
    stem = image_stem(path).lower()
    return any(stem == ending or stem.endswith(("_" + ending, "-" + ending)) for ending in LABEL_ENDINGS)


def read_image_list(path: str | os.PathLike, section: str | None = None) -> list[ImageInput]:
    """The images of a list file or folder (see the module's docstring)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
                       and not p.name.startswith("."))
        labels = [p for p in files if _looks_like_label(p)]
        if labels:
            logger.info("%s: left out %d file(s) named like labels (%s%s); name them with --image to explain them",
                        path, len(labels), ", ".join(p.name for p in labels[:3]), ", …" if len(labels) > 3 else "")
        files = [p for p in files if p not in labels]
        if not files:
            raise ConfigError(f"{path}: no image file in this folder ({', '.join(IMAGE_SUFFIXES)})")
        return [ImageInput(str(p)) for p in files]
    if not path.is_file():
        raise ConfigError(f"--images {path}: no such file or folder")
    base = path.parent
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        inputs = []
        for number, entry in enumerate(_datalist_entries(payload, path, section)):
            if isinstance(entry, str):
                inputs.append(ImageInput(_relative_to(base, entry)))
            elif isinstance(entry, dict) and isinstance(entry.get("image"), (str, list)) and entry["image"]:
                inputs.append(ImageInput.case(_entry_files(entry, base), _relative_to(base, entry.get("label"))))
            else:
                raise ConfigError(f"{path}: entry {number} has no 'image' path: {entry!r}")
        return inputs
    if suffix in (".csv", ".tsv"):
        with open(path, newline="") as stream:
            reader = csv.DictReader(stream, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise ConfigError(f"{path}: a CSV list needs an 'image' column (and may have 'label'); columns: {reader.fieldnames}")
            return [ImageInput.case(_entry_files({k: _cell(v) for k, v in row.items() if k}, base),
                                    _relative_to(base, row.get("label")))
                    for row in reader if (row.get("image") or "").strip()]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [ImageInput(_relative_to(base, line)) for line in lines if line and not line.startswith("#")]


def _cell(value: str | None):
    """A CSV cell: one file, or several separated by ``;``."""
    parts = [p.strip() for p in (value or "").split(";") if p.strip()]
    return parts if len(parts) > 1 else (parts[0] if parts else "")


def _entry_files(entry: dict, base: Path) -> list[tuple[str, str]]:
    """The ``(key, file)`` pairs of a datalist entry or CSV row: ``image`` first (a list is stacked),
    then every other key whose value names image files (``label`` is the ground truth, not an input)."""
    pairs = []
    for key in ["image", *[k for k in entry if k not in ("image", "label")]]:
        values = entry[key] if isinstance(entry[key], list) else [entry[key]]
        files = [v for v in values if isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES)]
        if key == "image" or (files and len(files) == len(values)):
            pairs += [(key, _relative_to(base, v)) for v in values if isinstance(v, str) and v]
    return pairs


def collect_inputs(images: Sequence[str] = (), lists: Sequence[str] = (), section: str | None = None) -> list[ImageInput]:
    """Every input of a run in order: ``images`` (files, globs) then each list's; an image
    listed more than once is kept once (its first label) and reported once."""
    plain, pairs = split_pairs(list(images))
    inputs = [ImageInput(p) for p in expand_patterns(plain)]
    if pairs:  # every KEY=FILE of the command line: one case
        inputs.append(ImageInput.case(pairs))
    for path in lists:
        inputs.extend(read_image_list(path, section))
    counts = Counter(identity_of(i.image) for i in inputs)
    for identity, count in counts.items():
        if count > 1:
            logger.warning("%s is listed %d times; it runs once", identity, count)
    seen, unique = set(), []
    for item in inputs:
        identity = identity_of(item.image)
        if identity not in seen:
            seen.add(identity)
            unique.append(item)
    return unique
