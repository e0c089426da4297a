"""What the GUI may read: its roots, the ids of their files, the one resolver, and upload checks.

A **file id** is ``"<root id>:<posix path relative to the root>"``: roots ``"0"``, ``"1"``, … are
the ``--root`` folders, ``"out"`` is the output folder (jobs and uploads); ``"0:"`` is root 0
itself. Every id the browser sends goes through :meth:`Roots.resolve`, which refuses (403) NUL
bytes, absolute paths, ``..`` components, still-encoded characters (``%2e%2e``: an id arrives
URL-decoded once) and anything that, symlinks followed, ends up outside its root; a missing file
is a 404. Nothing else in the GUI turns text into a path.

Uploads are checked by their first bytes, not their name (:func:`check_upload`): NIfTI (magic
``n+1``/``ni1`` at byte 344, after gunzip for ``.nii.gz``), NRRD, MetaImage, PNG, JPEG, TIFF and
DICOM (``DICM`` at byte 128); the name must agree with the content.

Example:
    >>> import pathlib, tempfile
    >>> from esegeta_monai.apps.gui.paths import FileIdError, Roots
    >>> base = pathlib.Path(tempfile.mkdtemp()).resolve()
    >>> (base / "scans").mkdir()
    >>> _ = (base / "scans" / "a.nii.gz").write_bytes(b"")
    >>> roots = Roots([base], out=base / "out")
    >>> roots.resolve("0:scans/a.nii.gz") == base / "scans" / "a.nii.gz"
    True
    >>> roots.file_id(base / "scans" / "a.nii.gz"), roots.file_id(base / "out")
    ('0:scans/a.nii.gz', 'out:')
    >>> def status(file_id):
    ...     try:
    ...         return roots.resolve(file_id)
    ...     except FileIdError as error:
    ...         return error.status
    >>> [status(bad) for bad in ("0:../x", "0:/etc/passwd", "0:%2e%2e/x", "0:scans/b.nii.gz", "9:a")]
    [403, 403, 403, 404, 404]
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from esegeta_monai.errors import EsegetaError
from esegeta_monai.jobs.naming import safe_name

__all__ = ["FileIdError", "Root", "Roots", "OUT_ROOT", "check_upload", "sniff", "upload_name", "SNIFF_BYTES",
           "UPLOAD_KINDS"]

#: the id of the output folder's root
OUT_ROOT = "out"
#: bytes of an upload read to tell its type (a gzip member holds the 348-byte NIfTI header well before this)
SNIFF_BYTES = 64 * 1024
#: the most entries a folder listing returns
MAX_ENTRIES = 5000

#: content kind → (what it is called, the file name endings that say so)
UPLOAD_KINDS = {
    "nifti": ("NIfTI", (".nii", ".nii.gz")),
    "nrrd": ("NRRD", (".nrrd", ".nhdr")),
    "metaimage": ("MetaImage", (".mha", ".mhd")),
    "png": ("PNG", (".png",)),
    "jpeg": ("JPEG", (".jpg", ".jpeg")),
    "tiff": ("TIFF", (".tif", ".tiff")),
    "dicom": ("DICOM", (".dcm", "")),
}
_KNOWN = ("a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), PNG, JPEG, TIFF or DICOM (.dcm) image")
_DRIVE = re.compile(r"^[A-Za-z]:")


class FileIdError(EsegetaError):
    """A file id refused (``status`` 403), unknown or missing (404), or malformed (400)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Root:
    """One readable folder: its id, its resolved path, a display name."""

    id: str
    path: Path
    name: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "path": str(self.path), "name": self.name}


class Roots:
    """The roots of one GUI: the ``folders`` (ids ``"0"``, ``"1"``, …) and ``out`` (id ``"out"``,
    created if missing)."""

    def __init__(self, folders: Sequence[str | os.PathLike], out: str | os.PathLike):
        out_path = Path(out).expanduser()
        out_path.mkdir(parents=True, exist_ok=True)
        self.roots: list[Root] = []
        for index, folder in enumerate(folders):
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise FileIdError(f"root {folder}: no such folder; give existing folders with --root", 400)
            self.roots.append(Root(str(index), path, path.name or str(path)))
        self.roots.append(Root(OUT_ROOT, out_path.resolve(), f"output ({out_path.resolve().name})"))
        self._by_id = {root.id: root for root in self.roots}

    @property
    def out(self) -> Path:
        return self._by_id[OUT_ROOT].path

    def root(self, root_id: str) -> Root:
        if root_id not in self._by_id:
            raise FileIdError(f"no root {root_id!r}; the roots are {', '.join(self._by_id)} (GET /api/roots)", 404)
        return self._by_id[root_id]

    def resolve(self, file_id: str, kind: str | None = None) -> Path:
        """The real path of an existing file (``kind="file"``), folder (``"dir"``) or either.

        Raises :class:`FileIdError`: 400 malformed, 403 refused, 404 missing or of the wrong kind.
        """
        if not isinstance(file_id, str) or ":" not in file_id:
            raise FileIdError(f"{file_id!r} is not a file id; ids look like '0:scans/a.nii.gz' (GET /api/files lists them)", 400)
        if "\0" in file_id:
            raise FileIdError(f"file id {file_id!r} holds a NUL byte; refused")
        root_id, _, relative = file_id.partition(":")
        root = self.root(root_id)
        if "%" in relative and unquote(relative) != relative:
            raise FileIdError(f"file id {file_id!r} holds URL-encoded characters; ids are sent decoded once, so this is refused")
        if relative.startswith(("/", "~")) or "\\" in relative or _DRIVE.match(relative):
            raise FileIdError(f"file id {file_id!r}: the path must be relative to root {root_id} ({root.path}); absolute paths are refused")
        if ".." in relative.split("/"):
            raise FileIdError(f"file id {file_id!r}: '..' is refused; paths stay inside root {root_id} ({root.path})")
        real = Path(os.path.realpath(root.path / relative))
        if real != root.path and root.path not in real.parents:
            raise FileIdError(f"file id {file_id!r} leads outside root {root_id} ({root.path}), through a symbolic link; refused")
        if not real.exists():
            raise FileIdError(f"{file_id}: no such file or folder under root {root_id} ({root.path})", 404)
        if kind == "file" and not real.is_file():
            raise FileIdError(f"{file_id} is a folder, not a file; GET /api/files?dir={file_id} lists it", 404)
        if kind == "dir" and not real.is_dir():
            raise FileIdError(f"{file_id} is a file, not a folder; GET /api/file/{file_id} reads it", 404)
        return real

    def file_id(self, path: str | os.PathLike) -> str | None:
        """The id of ``path`` under the innermost root holding it (``None``: under no root)."""
        real = Path(os.path.realpath(path))
        holders = [r for r in self.roots if real == r.path or r.path in real.parents]
        if not holders:
            return None
        root = max(holders, key=lambda r: len(r.path.parts))
        relative = real.relative_to(root.path).as_posix()
        return f"{root.id}:{'' if relative == '.' else relative}"

    def listing(self, dir_id: str | None) -> dict:
        """The entries of a folder (sub-folders first, hidden files left out, symbolic links that
        lead out of the root left out); without ``dir_id``, the roots."""
        if not dir_id:
            entries = [{"id": f"{r.id}:", "name": r.name, "kind": "dir", "size": None, "path": str(r.path)} for r in self.roots]
            return {"id": None, "parent": None, "entries": entries, "truncated": False}
        folder = self.resolve(dir_id, kind="dir")
        root_id, _, relative = dir_id.partition(":")
        root = self.root(root_id)
        prefix = relative.strip("/")
        entries = []
        with os.scandir(folder) as scan:
            for item in scan:
                if item.name.startswith("."):
                    continue
                real = Path(os.path.realpath(item.path))
                if real != root.path and root.path not in real.parents:
                    continue
                is_dir = real.is_dir()
                entries.append({"id": f"{root_id}:{prefix + '/' if prefix else ''}{item.name}", "name": item.name,
                                "kind": "dir" if is_dir else "file", "size": None if is_dir else real.stat().st_size})
        entries.sort(key=lambda e: (e["kind"] != "dir", e["name"].lower()))
        parent = None if not prefix else f"{root_id}:{prefix.rpartition('/')[0]}"
        return {"id": dir_id, "parent": parent, "path": str(folder), "entries": entries[:MAX_ENTRIES],
                "truncated": len(entries) > MAX_ENTRIES}


# --------------------------------------------------------------------------------------- uploads


def upload_name(name: str | None) -> str:
    """A safe file name for an upload called ``name`` (its last component, unsafe characters
    replaced); raises :class:`FileIdError` (400) when nothing is left."""
    base = re.split(r"[\\/]", str(name or ""))[-1].replace("\0", "")
    if base in ("", ".", ".."):
        raise FileIdError(f"upload name {name!r}: give the file's name, e.g. ?name=scan.nii.gz", 400)
    return safe_name(base)[:200]


def _gunzip_head(data: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 1024)
    except zlib.error:
        return None


def sniff(head: bytes) -> tuple[str | None, bool]:
    """``(kind, gzipped)`` of a file from its first bytes; kind ``None``: no image type known."""
    gzipped = head[:2] == b"\x1f\x8b"
    if gzipped:
        head = _gunzip_head(head) or b""
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return "nifti", gzipped
    if len(head) >= 8 and head[4:8] in (b"n+2\0", b"ni2\0"):
        return "nifti", gzipped
    if head.startswith(b"NRRD"):
        return "nrrd", gzipped
    first = head.lstrip()[:64]
    if first.startswith((b"ObjectType", b"NDims")):
        return "metaimage", gzipped
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", gzipped
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg", gzipped
    if head[:4] in (b"II*\0", b"MM\0*"):
        return "tiff", gzipped
    if head[128:132] == b"DICM":
        return "dicom", gzipped
    return None, gzipped


def _expected(name: str) -> tuple[str | None, bool]:
    """The kind a file name announces, and whether it says gzip (``.nii.gz``)."""
    lower = name.lower()
    gz = lower.endswith(".gz")
    stem = lower[:-3] if gz else lower
    for kind, (_, endings) in UPLOAD_KINDS.items():
        if any(e and stem.endswith(e) for e in endings):
            return kind, gz
    return ("dicom", gz) if "." not in stem else (None, gz)


def check_upload(name: str, head: bytes) -> str:
    """The kind of an upload called ``name`` whose first bytes are ``head``; raises
    :class:`FileIdError` (415) naming the file and what was expected when they disagree."""
    expected, gz = _expected(name)
    kind, gzipped = sniff(head)
    if expected is None:
        found = f" (its content is {UPLOAD_KINDS[kind][0]})" if kind else ""
        raise FileIdError(f"{name}: unknown image file extension{found}; upload {_KNOWN}", 415)
    label = UPLOAD_KINDS[expected][0]
    if kind is None:
        what = {"nifti": "no NIfTI magic ('n+1' or 'ni1' at byte 344" + (" after gunzip)" if gz else ")"),
                "dicom": "no 'DICM' at byte 128"}.get(expected, f"not the {label} signature")
        raise FileIdError(f"{name} is not a {label} image: its header has {what}. Expected {_KNOWN}", 415)
    if kind != expected:
        suffix = UPLOAD_KINDS[kind][1][0] + (".gz" if gzipped else "")
        raise FileIdError(f"{name} is a {UPLOAD_KINDS[kind][0]} file but its name says {label}; rename it to end with {suffix}", 415)
    if gz != gzipped:
        fix = "add .gz to its name" if gzipped else "remove .gz from its name (it is not compressed)"
        raise FileIdError(f"{name}: the name and the compression disagree; {fix}", 415)
    return kind
