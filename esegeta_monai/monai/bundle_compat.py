"""What model-zoo configs assume about the machine, made to hold here — each change logged.

Configs written for a GPU workstation with every optional package installed fail elsewhere for
reasons that have nothing to do with the model:

- :func:`cpu_torch_loads`: ``torch.load(..., map_location='cuda')`` in a parse-time expression
  (DiNTS' architecture file) is mapped to the CPU when no GPU is present;
- :func:`reader_fallbacks`: ``LoadImaged(reader="ITKReader")`` without ``itk`` installed loses
  its ``reader``, so MONAI picks one by file type (nibabel for NIfTI; SimpleITK, which
  esegeta_monai adds as last resort, for the rest);
- :func:`checkpoint_source`: the weights file (and the key inside a dict checkpoint) that the
  config's ``CheckpointLoader`` reads, when it is not ``models/model.pt``;
- :func:`pip_name` / :func:`missing_module`: the pip package to install for a missing module.

Example:
    >>> pip_name("ignite"), pip_name("skimage"), pip_name("einops.layers.torch")
    ('pytorch-ignite', 'scikit-image', 'einops')
    >>> missing_module(ImportError("from einops.layers.torch import Rearrange (No module named 'einops')."))
    'einops'
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["pip_name", "missing_module", "cpu_torch_loads", "reader_fallbacks", "checkpoint_source", "config_nodes"]

logger = logging.getLogger(__name__)

#: import name → pip package, where they differ or where zoo bundles need them
PIP_NAMES = {
    "ignite": "pytorch-ignite", "skimage": "scikit-image", "cv2": "opencv-python-headless", "PIL": "pillow",
    "yaml": "pyyaml", "sklearn": "scikit-learn", "openslide": "openslide-python", "cucim": "cucim",
    "einops": "einops", "itk": "itk", "torchvision": "torchvision", "pydicom": "pydicom", "nibabel": "nibabel",
    "SimpleITK": "SimpleITK", "fire": "fire", "timm": "timm", "transformers": "transformers", "lmdb": "lmdb",
    "tifffile": "tifffile", "psutil": "psutil", "pandas": "pandas", "scipy": "scipy", "huggingface_hub": "huggingface_hub",
}

_MODULE_PATTERNS = (re.compile(r"No module named '([^']+)'"), re.compile(r"package `([^`]+)`"),
                    re.compile(r"^(?:from|import) ([\w.]+)"))


def pip_name(module: str) -> str:
    """The pip package that provides ``module`` (its top-level name when not known otherwise)."""
    top = module.split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


def missing_module(error: BaseException) -> str | None:
    """The module an import error (or MONAI's ``OptionalImportError``) says is missing."""
    name = getattr(error, "name", None)
    if isinstance(error, ModuleNotFoundError) and name:
        return name.split(".")[0]
    text = str(error)
    for pattern in _MODULE_PATTERNS:
        found = pattern.search(text.strip())
        if found:
            return found.group(1).split(".")[0]
    return None


def config_nodes(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (config id, value) of a raw config, depth first (ids joined with ``#``)."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from config_nodes(value, f"{prefix}#{key}" if prefix else str(key))


_CUDA = re.compile(r"""(map_location\s*=\s*)(?:torch\.device\(\s*)?['"]cuda(?::\d+)?['"]\s*\)?""")
_CUDA_DEVICE = re.compile(r"""^\$\s*torch\.device\(\s*['"]cuda(?::\d+)?['"]\s*\)\s*$""")


def cpu_torch_loads(parser) -> list[str]:
    """Map ``torch.load(..., map_location='cuda')`` expressions of the config, and plain
    ``$torch.device('cuda')`` values, to the CPU when no GPU is present (DiNTS bundles load their
    architecture that way while the network is built); returns what was changed."""
    if torch.cuda.is_available():
        return []
    notes = []
    for key, value in list(config_nodes(parser.get())):
        if not (key and isinstance(value, str) and value.startswith("$")):
            continue
        if "torch.load" in value and _CUDA.search(value):
            parser[key] = _CUDA.sub(r"\1'cpu'", value)
            notes.append(f"`{key}` loads with map_location cuda and no GPU is present: loaded on the CPU instead")
        elif _CUDA_DEVICE.match(value) and key != "device":
            parser[key] = "$torch.device('cpu')"
            notes.append(f"`{key}` is a CUDA device and no GPU is present: the CPU is used instead")
    return notes


def _is_loader(node: Any) -> bool:
    return isinstance(node, dict) and str(node.get("_target_", "")).split(".")[-1] in ("LoadImaged", "LoadImage")


def reader_fallbacks(parser) -> list[str]:
    """Drop ``reader: ITKReader`` from the config's loaders when ``itk`` is not installed."""
    if importlib.util.find_spec("itk") is not None:
        return []
    notes = []
    for key, node in list(config_nodes(parser.get())):
        if _is_loader(node) and "ITKReader" in str(node.get("reader", "")):
            node.pop("reader")
            notes.append(f"`{key}` reads with ITKReader and `itk` is not installed: MONAI picks the reader by file "
                         "type instead (nibabel for NIfTI; pip install itk to use ITK)")
    return notes


def checkpoint_source(parser) -> tuple[Path | None, str | None, str | None]:
    """The weights file the config's ``CheckpointLoader`` reads, the key of the network in its
    ``load_dict`` (``None``: the checkpoint is the state dict), and the loader's config id."""
    for key, node in config_nodes(parser.get()):
        if not (isinstance(node, dict) and str(node.get("_target_", "")).split(".")[-1] == "CheckpointLoader"):
            continue
        try:
            path = parser.get_parsed_content(f"{key}#load_path")
        except Exception as error:  # noqa: BLE001 - an unreadable path is reported as absent
            logger.debug("%s#load_path could not be parsed: %s", key, error)
            continue
        load_dict = node.get("load_dict")
        entry = None
        if isinstance(load_dict, dict):
            entry = next((k for k, v in load_dict.items() if isinstance(v, str) and re.fullmatch(r"@network(_def)?", v)), None)
        if isinstance(path, (str, Path)):
            return Path(path), entry, key
    return None, None, None
