"""The bundles under the GUI's roots: found by their files, described by their metadata.

A bundle is a folder with ``configs/metadata.json`` or ``configs/inference.(json|yaml|yml)``;
:class:`BundleCatalog` finds them under the ``--root`` folders (a few levels deep, hidden and
package folders skipped), reads each with :func:`~esegeta_monai.monai.bundle.load_bundle`
(``build_network=False``: configs and metadata only) and caches what it read until a config file
changes. A bundle's config holds ``$`` expressions, which are Python code: reading it runs them,
which is why only bundles under the roots the user started the GUI with are opened
(``config_is_code`` on every payload says so to the page).

Example:
    >>> from pathlib import Path
    >>> from esegeta_monai.apps.gui.bundles import is_bundle
    >>> is_bundle(Path("bundles/vessel_mra_demo")), is_bundle(Path("bundles"))
    (True, False)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from esegeta_monai.apps.cohort import default_targets
from esegeta_monai.apps.gui.paths import OUT_ROOT, FileIdError, Roots
from esegeta_monai.errors import EsegetaError
from esegeta_monai.methods.base import json_safe
from esegeta_monai.monai.bundle import INFERENCE_CONFIG_NAMES, Bundle, load_bundle

__all__ = ["BundleCatalog", "is_bundle", "find_bundles", "case_layout"]

logger = logging.getLogger(__name__)

#: how deep under a root bundles are looked for, and how many folders at most are looked into
SEARCH_DEPTH = 3
SEARCH_FOLDERS = 5000
_SKIPPED = {"__pycache__", "node_modules", "site-packages", "venv"}


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a bundle's ``configs/metadata.json`` or inference config."""
    configs = folder / "configs"
    return any((configs / name).is_file() for name in ("metadata.json", *INFERENCE_CONFIG_NAMES))


def find_bundles(roots: Roots) -> list[Path]:
    """The real paths of the bundle folders under the roots but the output folder, each once."""
    found: dict[Path, None] = {}
    visited = 0
    for root in roots.roots:
        if root.id == OUT_ROOT:
            continue
        queue = [(root.path, 0)]
        while queue and visited < SEARCH_FOLDERS:
            folder, depth = queue.pop(0)
            visited += 1
            if is_bundle(folder):
                found.setdefault(folder.resolve())
                continue
            if depth >= SEARCH_DEPTH:
                continue
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            queue += [(c, depth + 1) for c in children if not c.name.startswith(".") and c.name not in _SKIPPED
                      and c.resolve() != roots.out]
    return list(found)


def case_layout(bundle: Bundle) -> dict[str, Any]:
    """The files a case of ``bundle`` is made of, for the page's case builder: ``keys`` (the keys
    its ``LoadImaged`` reads: ``required`` then ``optional``), ``slots`` (one ``{"key", "label"}``
    per file, in order) and ``several`` (whether a case needs more than one file).

    The rule: every required key is one file; the image key is ``in_channels`` files, stacked as
    channels, when it is the only key read by a 3D bundle whose input has several channels (BraTS:
    T1c, T1, T2, FLAIR, named from the metadata's ``channel_def``). A 2D multi-channel input is one
    (colour) file. Optional keys are not asked for.

    Example:
        >>> from types import SimpleNamespace
        >>> from monai.transforms import Compose, LoadImaged
        >>> brats = SimpleNamespace(preprocessing=Compose([LoadImaged("image")]), image_key="image", in_channels=2,
        ...                         spatial_dims=3, channel_names={0: "T1", 1: "T2"})
        >>> [s["label"] for s in case_layout(brats)["slots"]]
        ['T1 (channel 1 of 2)', 'T2 (channel 2 of 2)']
    """
    from esegeta_monai.monai.io.images import loader_keys

    required, optional = loader_keys(bundle.preprocessing)
    key = bundle.image_key
    channels = bundle.in_channels or 1
    slots: list[dict[str, str]] = []
    if required in ([], [key]) and channels > 1 and bundle.spatial_dims == 3:
        names = bundle.channel_names
        slots = [{"key": key, "label": f"{names.get(i, f'channel {i}')} (channel {i + 1} of {channels})"}
                 for i in range(channels)]
    else:
        for name in [key] + [k for k in required if k != key]:
            slots.append({"key": name, "label": name})
    return {"keys": {"required": required, "optional": optional}, "image_key": key, "slots": slots,
            "several": len(slots) > 1}


def _stamp(folder: Path) -> tuple:
    """What changes when a bundle's configs or weights change."""
    files = sorted((folder / "configs").glob("*")) + [folder / "models" / "model.pt"]
    return tuple((p.name, p.stat().st_mtime_ns) for p in files if p.is_file())


class BundleCatalog:
    """The bundles under ``roots``, their payloads and their layers, cached."""

    def __init__(self, roots: Roots):
        self.roots = roots
        self._lock = threading.Lock()
        self._bundles: dict[Path, tuple[tuple, Bundle | EsegetaError]] = {}
        self._layers: dict[Path, tuple[tuple, list[dict]]] = {}

    def path(self, bundle_id: str) -> Path:
        """The folder of a bundle id (a file id); 400 when it holds no bundle."""
        folder = self.roots.resolve(bundle_id, kind="dir")
        if not is_bundle(folder):
            raise FileIdError(f"{bundle_id} ({folder}) is not a bundle: it has no configs/metadata.json nor "
                              "configs/inference.json|yaml; pick one from GET /api/bundles", 400)
        return folder

    def bundle(self, bundle_id: str) -> Bundle:
        """The bundle read without its network (cached); raises its :class:`EsegetaError`."""
        folder = self.path(bundle_id)
        with self._lock:
            stamp = _stamp(folder)
            cached = self._bundles.get(folder)
            if cached is None or cached[0] != stamp:
                try:
                    loaded: Bundle | EsegetaError = load_bundle(folder, build_network=False)
                except EsegetaError as error:
                    loaded = error
                self._bundles[folder] = cached = (stamp, loaded)
        if isinstance(cached[1], EsegetaError):
            raise cached[1]
        return cached[1]

    def list(self) -> list[dict[str, Any]]:
        """A payload per bundle found (one that cannot be read carries its ``error``)."""
        payloads = []
        for folder in find_bundles(self.roots):
            bundle_id = self.roots.file_id(folder)
            try:
                payloads.append(self.payload(bundle_id))
            except EsegetaError as error:
                payloads.append({"id": bundle_id, "name": folder.name, "root": bundle_id.partition(":")[0],
                                 "path": str(folder), "error": str(error), "config_is_code": True})
        return sorted(payloads, key=lambda p: (p["name"].lower(), p["id"]))

    def payload(self, bundle_id: str) -> dict[str, Any]:
        """What the bundle page shows: metadata, inputs, outputs, classes, window, samples."""
        bundle = self.bundle(bundle_id)
        meta = bundle.metadata
        data_format = meta.get("network_data_format") if isinstance(meta.get("network_data_format"), dict) else {}
        targets = default_targets(bundle)
        return {
            "id": bundle_id,
            "name": str(meta.get("name") or bundle.root.name),
            "root": bundle_id.partition(":")[0],
            "path": str(bundle.root),
            "description": str(meta.get("description") or ""),
            "version": meta.get("version"),
            "task": meta.get("task"),
            "intended_use": meta.get("intended_use"),
            "license": meta.get("license"),
            "inputs": json_safe(data_format.get("inputs") or {}),
            "outputs": json_safe(data_format.get("outputs") or {}),
            "class_names": {str(k): v for k, v in sorted(bundle.class_names.items())},
            "channel_names": {str(k): v for k, v in sorted(bundle.channel_names.items())},
            "window": json_safe(dict(bundle.inferer)),
            "samples": [i for i in (self.roots.file_id(p) for p in bundle.samples) if i is not None],
            "classifier": targets == ["class:1"],
            "default_targets": targets,
            "spatial_dims": bundle.spatial_dims,
            "in_channels": bundle.in_channels,
            "out_channels": bundle.out_channels,
            "has_weights": (bundle.root / "models" / "model.pt").is_file(),
            "case": case_layout(bundle),
            "config_is_code": True,
        }

    def layers(self, bundle_id: str) -> list[dict[str, Any]]:
        """The network's layers with their output shapes (as ``esegeta layers``), cached; the
        network is built in this process (CPU) on a zero window, or the first sample."""
        import torch

        from esegeta_monai.core.layers import layer_table
        from esegeta_monai.monai.io import load_for_explanation

        folder = self.path(bundle_id)
        stamp = _stamp(folder)
        cached = self._layers.get(folder)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._lock:
            bundle = load_bundle(folder)
            roi = bundle.inferer.get("roi_size")
            if roi is not None and bundle.in_channels:
                example = torch.zeros((1, bundle.in_channels, *roi))
            elif bundle.samples:
                data = load_for_explanation(bundle.samples[0], bundle.preprocessing, bundle.image_key)
                example = data[bundle.image_key][None].as_tensor()
            else:
                raise EsegetaError(f"bundle {bundle.root}: no window size and no sample input to run the network on; "
                                   "add a sample/ image")
            rows = [{"name": r["name"], "type": r["type"], "shape": list(r["output_shape"])}
                    for r in layer_table(bundle.network, example)]
            self._layers[folder] = (stamp, rows)
        return rows
