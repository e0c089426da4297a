"""Output names that are unique and stable: one folder per image, one name per target and method.

Names are chosen once and kept: a name an earlier run gave to an input (``previous``, read from
the journal) stays that input's name, and no other input ever gets it. A new input gets the name
it asks for (its file stem) when nobody else wants it; inputs that ask for the same name each get
it with the parent folders that tell them apart (``a__s1``, ``a__s2``), a short digest as the last
resort. The result does not depend on the order of the inputs.

Example:
    >>> from esegeta_monai.jobs.naming import unique_names
    >>> names = unique_names({"/d/s1/a.nii.gz": "a", "/d/s2/a.nii.gz": "a", "/d/s3/a_2.nii.gz": "a_2"})
    >>> [names[k] for k in ("/d/s1/a.nii.gz", "/d/s2/a.nii.gz", "/d/s3/a_2.nii.gz")]
    ['a__s1', 'a__s2', 'a_2']
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import PurePath

__all__ = ["unique_names", "safe_name", "IMAGE_SUFFIXES", "image_stem"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_stem(path: str | PurePath) -> str:
    """File name without its image extension(s): ``scan.nii.gz`` → ``scan``."""
    name = PurePath(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return PurePath(name).stem or name


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_``, ``-``
    replaced by ``_`` (never empty, never hidden)."""
    name = _UNSAFE.sub("_", str(text)).lstrip(".")
    return name or "_"


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


def _parents_apart(identities: list[str]) -> dict[str, str] | None:
    """For paths that share a stem: the fewest trailing parent folders that tell them apart."""
    parents = {i: PurePath(i).parent.parts for i in identities}
    depth = max(len(p) for p in parents.values())
    for k in range(1, depth + 1):
        tails = {i: "_".join(p[-k:]) for i, p in parents.items()}
        if len(set(tails.values())) == len(identities) and all(tails.values()):
            return {i: safe_name(t) for i, t in tails.items()}
    return None


def unique_names(
    wanted: Mapping[str, str], previous: Mapping[str, str] | None = None, separator: str = "__",
    reserved: Iterable[str] = (),
) -> dict[str, str]:
    """A unique, file-name-safe name for every identity of ``wanted`` (identity → wished name).

    Args:
        wanted: identity (e.g. a resolved file path) → the name it would like (e.g. its stem).
        previous: identity → name given by earlier runs; those names are kept and reserved.
        separator: between a wished name and what tells equal wishes apart.
        reserved: names nobody gets as they are (e.g. ``report``, the report's folder).
    """
    previous = dict(previous or {})
    names = {identity: previous[identity] for identity in wanted if identity in previous}
    taken = set(previous.values()) | set(reserved)
    groups: dict[str, list[str]] = defaultdict(list)
    for identity, wish in wanted.items():
        if identity not in names:
            groups[safe_name(wish)].append(identity)
    for wish in sorted(groups):
        members = sorted(groups[wish])
        if len(members) == 1 and wish not in taken:
            names[members[0]] = wish
            taken.add(wish)
            continue
        apart = _parents_apart(members) or {}
        for identity in members:
            name = f"{wish}{separator}{apart[identity]}" if identity in apart else f"{wish}{separator}{_digest(identity)}"
            if name in taken:
                name = f"{wish}{separator}{_digest(identity)}"
            while name in taken:  # a digest clash with a reserved name: extremely unlikely
                name = f"{name}_{_digest(name)}"
            names[identity] = name
            taken.add(name)
    return names
