"""Reading a MONAI bundle as it is: network, weights, preprocessing, inferer, metadata.

A bundle is a folder with ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json``
and ``models/model.pt``. :func:`load_bundle` parses the inference config with
:class:`monai.bundle.ConfigParser` (``bundle_root`` and ``device`` overridden), builds the
network from ``network_def`` and loads the weights into it, and returns the pieces that an
explanation needs in a :class:`Bundle`. Nothing of the bundle is edited; every failure is a
:class:`~esegeta_monai.errors.BundleError` that names the file or key and says how to fix it.

Example:
    >>> from esegeta_monai.monai.bundle import load_bundle  # doctest: +SKIP
    >>> bundle = load_bundle("spleen_ct_segmentation")  # doctest: +SKIP
    >>> bundle.inferer["roi_size"], bundle.class_names  # doctest: +SKIP
    ((96, 96, 96), {0: 'background', 1: 'spleen'})
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch
import yaml
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from esegeta_monai.errors import BundleError, ConfigError
from esegeta_monai.core.windows import WINDOW_SETTINGS, WindowSettings, inferer_settings
from esegeta_monai.monai.bundle_compat import checkpoint_source, cpu_torch_loads, missing_module, pip_name, reader_fallbacks
from esegeta_monai.monai.bundle_imports import bundle_import_path
from esegeta_monai.monai.slices import SliceNetwork, is_slice_inferer, slice_window_settings

__all__ = [
    "bundle_files","Bundle", "load_bundle", "shipped_config", "INFERENCE_CONFIG_NAMES"]

logger = logging.getLogger(__name__)

#: Inference config file names looked up in ``<bundle>/configs/``, in this order.
INFERENCE_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: weight files looked for in ``<bundle>/models/`` when the config names none that exists
DEFAULT_WEIGHTS = ("model.pt", "model.ts")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".ckpt")


@dataclass
class Bundle:
    """The parts of a MONAI bundle needed to explain its model.

    Attributes:
        root: absolute path of the bundle folder.
        parser: the :class:`monai.bundle.ConfigParser` of the inference config (with
            ``bundle_root`` and ``device`` overridden); use it to reach any other key.
        network: the network from ``network_def`` (or ``network``), weights loaded, on the
            requested device, in ``eval()`` mode (``None`` with ``build_network=False``).
        preprocessing: the parsed ``preprocessing`` transform (usually a ``Compose``), or ``None``.
        image_key: the key of the image in the data dicts.
        inferer: ``roi_size`` (``None``: the whole image at once), ``overlap``, ``mode``,
            ``sw_batch_size``, ``sigma_scale``, ``padding_mode``, ``cval``.
        samples: sample input files shipped with the bundle (``sample/``, ``samples/``) or listed
            by its ``datalist`` when they exist.
        metadata: the content of ``configs/metadata.json`` (empty if absent or unreadable).
        class_names: output channel index → name (metadata ``outputs.pred.channel_def``).
        channel_names: input channel index → name (metadata ``inputs.image.channel_def``).
        in_channels: number of input channels, if known.
        spatial_dims: 2 or 3, if known.
        out_channels: number of output channels, if known.
        config_files: the config files read, in order.
        weights_path: the weights file loaded (``None`` when no network was built).
        device: the device of the network.
        inferer_object: the parsed ``inferer`` itself (``None`` if the config has none).
        slice_dim: for a ``SliceInferer`` bundle, the slice axis: ``network`` is then the 2D
            network lifted to volumes (:class:`~esegeta_monai.monai.slices.SliceNetwork`) and
            ``inferer`` the equivalent 3D window (``None`` otherwise).
        notes: what was adapted to this machine while reading (a CUDA ``map_location`` mapped to
            the CPU, an ITK reader replaced), for the log and the records.
    """

    root: Path
    parser: ConfigParser
    network: torch.nn.Module | None = None
    preprocessing: Any = None
    image_key: str = "image"
    inferer: dict = field(default_factory=dict)
    samples: list[Path] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    channel_names: dict[int, str] = field(default_factory=dict)
    in_channels: int | None = None
    spatial_dims: int | None = None
    out_channels: int | None = None
    config_files: list[Path] = field(default_factory=list)
    weights_path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    inferer_object: Any = None
    slice_dim: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def window(self) -> WindowSettings:
        """The inferer's window settings (``roi_size=None``: the whole image)."""
        return WindowSettings.from_mapping({k: v for k, v in self.inferer.items() if v is not None}, "inferer")


def bundle_files(bundle_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
                 extra_configs: Sequence[str | os.PathLike] = (), config_file: Any = None) -> dict[str, list[Path]]:
    """The files a bundle's explanation depends on, found without parsing anything: its config
    files (with the overrides) and metadata, and its weights file.

    Example:
        >>> sorted(bundle_files("bundles/vessel_mra_demo"))  # doctest: +SKIP
        ['configs', 'weights']
    """
    root = Path(bundle_dir).expanduser().resolve()
    configs = _find_configs(root, config_file) + [_extra_config(f) for f in extra_configs]
    metadata = root / "configs" / "metadata.json"
    if weights is not None:
        weight_files = [Path(weights).expanduser()]
    else:  # the config may name any of them (CheckpointLoader): all count
        models = root / "models"
        weight_files = sorted(p for p in models.iterdir() if p.suffix in WEIGHT_SUFFIXES) if models.is_dir() else []
        weight_files = weight_files or [models / DEFAULT_WEIGHTS[0]]
    return {"configs": configs + ([metadata] if metadata.is_file() else []), "weights": weight_files}


# ----------------------------------------------------------------------------------------- files


def _find_configs(root: Path, config_file: Any) -> list[Path]:
    if config_file is None:
        configs = root / "configs"
        if not configs.is_dir():
            raise BundleError(
                f"{root}: no configs/ folder. A MONAI bundle keeps its inference config in "
                f"configs/inference.json (or .yaml). Fix: give the bundle folder itself (--bundle: the folder "
                "that contains configs/ and models/)"
            )
        for name in INFERENCE_CONFIG_NAMES:
            if (configs / name).is_file():
                return [configs / name]
        present = sorted(p.name for p in configs.iterdir() if p.is_file())
        raise BundleError(
            f"{configs}: no inference config ({', '.join(INFERENCE_CONFIG_NAMES)}); found {present or 'nothing'}. "
            "Fix: name it configs/inference.json (or .yaml), or in Python pass load_bundle(..., config_file=NAME)"
        )
    names = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    found = []
    for name in names:
        p = Path(name).expanduser()
        candidates = [p] if p.is_absolute() else [p, root / "configs" / p, root / p]
        for c in candidates:
            if c.is_file():
                found.append(c.resolve())
                break
        else:
            raise BundleError(
                f"{name}: config file not found (looked in {', '.join(str(c) for c in candidates)}). "
                "Fix: give an existing .json/.yaml file, absolute or relative to the bundle's configs/"
            )
    return found


def shipped_config(name: str = "explain") -> Path:
    """Path of a config shipped with esegeta_monai (installed as ``esegeta_monai.configs``).

    ``explain`` adds an explain step to a bundle's ``monai.bundle run``; ``swin_unetr_compat``
    makes the model zoo's ``swin_unetr_btcv_segmentation`` build on MONAI ≥ 1.5.

    Example:
        >>> shipped_config("explain").name
        'explain.json'
    """
    from importlib.resources import files

    folder = files("esegeta_monai.configs")
    for candidate in (name, f"{name}.json", f"{name}.yaml"):
        path = folder / candidate
        if path.is_file():
            return Path(str(path))
    known = sorted(p.name for p in folder.iterdir() if p.name.endswith((".json", ".yaml")))
    raise BundleError(f"no shipped config {name!r}; shipped: {', '.join(known)}")


def _extra_config(name: str | os.PathLike) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix in ("", ".json", ".yaml") and path.parent == Path("."):
        try:
            return shipped_config(str(name))
        except BundleError:
            pass
    raise BundleError(f"{name}: override config not found. Fix: give the path of a JSON/YAML config, or the name of a "
                      "shipped one (`esegeta bundle-config --list`)")


def _read_config_file(path: Path) -> dict:
    """Read one JSON/YAML config file; syntax errors become BundleErrors naming file and line."""
    try:
        content = ConfigParser.load_config_file(path)
    except json.JSONDecodeError as e:
        raise BundleError(
            f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}. "
            "Fix: correct the file (a missing comma or quote, a trailing comma, or `true`/`false` case)"
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BundleError(
            f"{path}: YAML syntax error{where}: {problem}. Fix: correct the file (indentation, quotes)"
        ) from e
    except ValueError as e:  # unknown suffix, duplicated keys (MONAI_FAIL_ON_DUPLICATE_CONFIG)
        raise BundleError(f"{path}: cannot read the config: {e}. Fix: use a valid .json/.yaml file") from e
    except OSError as e:
        raise BundleError(
            f"{path}: cannot open the config ({e.strerror or e}). Fix: check the file and its permissions"
        ) from e
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise BundleError(
            f"{path}: the config must be a mapping of keys to values, got a {type(content).__name__}. "
            "Fix: use the MONAI bundle config layout ({\"network_def\": ..., \"preprocessing\": ...})"
        )
    return content


def _read_metadata(root: Path) -> dict:
    path = root / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("%s: cannot read the metadata (%s); going on without it", path, e)
        return {}
    if not isinstance(meta, dict):
        logger.warning("%s: the metadata is not a JSON object; going on without it", path)
        return {}
    return meta


# --------------------------------------------------------------------------------- diagnostics


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0].rstrip(".") if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _telling(chain: list[BaseException]) -> BaseException:
    """The outermost exception of a chain that is not one of MONAI's generic parsing wrappers."""
    for e in chain:
        text = str(e).lstrip()
        if not text.startswith(("Failed to instantiate component", "Failed to evaluate")):
            return e
    return chain[-1]


def _display_id(key: str) -> str:
    return key.replace("::", "#")


def _failing_key(parser: ConfigParser, key: str) -> str:
    """After a failed ``get_parsed_content(key)``, the deepest key that failed.

    MONAI resolves the references of a key depth-first before the key itself; the failing key is
    the first unresolved one, in that order, whose own references are all resolved.
    """
    resolver = parser.ref_resolver
    done = resolver.resolved_content
    seen: set[str] = set()

    def visit(k: str) -> str | None:
        if k in seen or k in done or k not in resolver.items:
            return None
        seen.add(k)
        item = resolver.items[k]
        for d in ReferenceResolver.find_refs_in_config(config=item.get_config(), id=k):
            found = visit(d)
            if found is not None:
                return found
        return k

    return visit(key) or key


def _raw(raw_config: dict, key: str) -> Any:
    node: Any = raw_config
    for part in ReferenceResolver.split_id(key):
        try:
            node = node[part] if isinstance(node, dict) else node[int(part)]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return node


def _referenced_paths(parser: ConfigParser, expression: str) -> list[str]:
    paths = []
    for ref in ReferenceResolver.match_refs_pattern(expression):
        value = parser.ref_resolver.resolved_content.get(ref)
        if isinstance(value, (str, os.PathLike)):
            paths.append(str(value))
    return paths


_CUDA_RE = re.compile(r"""['"]cuda(?::\d+)?['"]""")
_CUDA_DEVICE_RE = re.compile(r"""torch\.device\(\s*['"]cuda(?::\d+)?['"]\s*\)""")


def _cpu_expression(text: str) -> str:
    """``text`` with its CUDA device literals replaced by ``'cpu'``."""
    return _CUDA_RE.sub("'cpu'", _CUDA_DEVICE_RE.sub("'cpu'", text))


def _is_cuda_error(exc: BaseException) -> bool:
    text = str(exc)
    return (
        "torch.cuda.is_available() is False" in text
        or "not compiled with CUDA" in text
        or "NVIDIA driver" in text
        or ("CUDA" in text and isinstance(exc, (RuntimeError, AssertionError)) and not torch.cuda.is_available())
    )


_MISSING_REFERENCE = re.compile(r"referring item `@([^`]+)` is not defined")


def _explain_failure(
    parser: ConfigParser, raw_config: dict, key: str, exc: BaseException, cfg: str, purpose: str
) -> BundleError:
    """A BundleError naming the key whose parsing failed, the cause and the fix."""
    culprit = _failing_key(parser, key)
    chain = _chain(exc)
    raw = _raw(raw_config, culprit)
    culprit, key = _display_id(culprit), _display_id(key)
    root = chain[-1]
    raw_text = raw if isinstance(raw, str) else None
    where = f"`{culprit}`" + (f" (needed by `{key}`)" if culprit != key and not culprit.startswith(key + "#") else "")
    gpu = not torch.cuda.is_available()

    # SwinUNETR's img_size (removed in MONAI 1.5) and other keyword arguments a newer MONAI dropped
    for e in chain:
        if isinstance(e, TypeError) and "unexpected keyword argument" in str(e):
            arg = str(e).split("unexpected keyword argument")[-1].strip().strip("'\"")
            target = raw.get("_target_") if isinstance(raw, dict) else None
            owner = culprit if isinstance(raw, dict) and arg in raw else key
            extra = (
                f" MONAI {monai.__version__} removed `img_size` from SwinUNETR (since MONAI 1.5): the network "
                "no longer needs it and the weights do not depend on it."
                if arg == "img_size"
                else f" The installed MONAI {monai.__version__} does not accept it (a typo, or an argument of "
                "another MONAI version)."
            )
            what = f"`{owner}`" + (f" ({target})" if target else "")
            return BundleError(
                f"{cfg}: {what} cannot be built: {_short(e)}.{extra} Fix: remove `{arg}` from `{owner}` "
                f"in {cfg} (delete the line `\"{arg}\": ...`), or load with "
                f"load_bundle(..., remove_keys=['{owner}#{arg}'])" + (
                    "; for the model zoo's swin_unetr_btcv_segmentation, add the shipped override: "
                    "esegeta explain --bundle-config swin_unetr_compat ..., or in monai.bundle run "
                    "--config_file \"['configs/inference.json', '$(esegeta bundle-config swin_unetr_compat)']\""
                    if arg == "img_size" else "")
            )

    # torch.load of an extra file while parsing (e.g. DiNTS' architecture checkpoint)
    if raw_text is not None and "torch.load" in raw_text:
        paths = _referenced_paths(parser, raw_text)
        for e in chain:
            filename = getattr(e, "filename", None)
            if filename:
                paths.insert(0, str(filename))
        path_text = paths[0] if paths else "the file it names"
        needs_gpu = bool(_CUDA_RE.search(raw_text)) and gpu
        cpu_text = _cpu_expression(raw_text)
        gpu_hint = (
            f" It is also loaded with map_location cuda, which needs a GPU: on a machine without one, override "
            f"`{culprit}`, e.g. overrides={{'{culprit}': \"{cpu_text}\"}}."
            if needs_gpu
            else ""
        )
        if any(isinstance(e, FileNotFoundError) for e in chain) or (paths and not Path(paths[0]).exists()):
            return BundleError(
                f"{cfg}: `{culprit}` loads an extra file with torch.load ({raw_text}) while building `{key}`, "
                f"and {path_text} does not exist. Fix: put that file there (it ships with the bundle in the "
                f"model zoo, next to models/model.pt).{gpu_hint}"
            )
        if any(isinstance(e, pickle.UnpicklingError) for e in chain):
            safe = cpu_text if needs_gpu else raw_text
            safe = safe[:-1] + ", weights_only=False)" if safe.endswith(")") and "weights_only" not in safe else safe
            return BundleError(
                f"{cfg}: `{culprit}` loads {path_text} with torch.load ({raw_text}), which torch "
                f"{torch.__version__.split('+')[0]} refuses in its default weights-only mode ({_short(root)[:200]}). "
                f"Fix: if you trust that file, override `{culprit}`, e.g. overrides={{'{culprit}': \"{safe}\"}} "
                "(full unpickling can run arbitrary code)."
            )
        if any(_is_cuda_error(e) for e in chain):
            return BundleError(
                f"{cfg}: `{culprit}` loads {path_text} with map_location cuda ({raw_text}), which needs a GPU, "
                f"and none is available ({_short(root)[:200]}). Fix: run on a machine with a GPU, or override "
                f"`{culprit}` with map_location='cpu', e.g. overrides={{'{culprit}': \"{cpu_text}\"}}."
            )
        return BundleError(
            f"{cfg}: `{culprit}` failed to load {path_text} with torch.load ({_short(root)}). Fix: check that "
            "file (re-download the bundle)"
        )

    if any(_is_cuda_error(e) for e in chain):
        sub = ""
        if isinstance(raw, dict):
            cuda_keys = [k for k, v in raw.items() if isinstance(v, str) and _CUDA_RE.search(v)]
            if cuda_keys:
                sub = (
                    f", e.g. overrides={{'{culprit}#{cuda_keys[0]}': \"{_cpu_expression(raw[cuda_keys[0]])}\"}}"
                )
        return BundleError(
            f"{cfg}: {where} needs a GPU ({_short(root)}) and none is available. Fix: run on a machine with a "
            f"GPU, or override `{culprit}` so that it uses the CPU{sub}"
        )
    telling = _telling(chain)
    missing = next((m for e in chain if (m := _MISSING_REFERENCE.search(str(e)))), None)
    if missing is not None:
        name = missing.group(1)
        example = ' (the network: "network_def": {"_target_": "UNet", ...})' if name in ("network_def", "network") else ""
        return BundleError(
            f"{cfg}: cannot build {purpose}: `{key}` refers to `@{name}`, which the config does not define. "
            f"Fix: add `{name}` to {cfg}{example}, or give `{key}` without that reference"
        )
    missing_text = _missing_package_text(parser, chain, raw, culprit, where, cfg, purpose)
    if missing_text is not None:
        return BundleError(missing_text)
    hint = ""
    if isinstance(telling, (ModuleNotFoundError, ImportError)) or "Cannot locate class" in str(telling):
        hint = (
            " (a `_target_` short name resolves only inside MONAI: a third-party class needs its full dotted "
            "path, e.g. mypackage.nets.MyNet, and its package installed)"
        )
    return BundleError(
        f"{cfg}: cannot build {purpose}: {where} failed with {_short(telling)}. Fix: correct `{culprit}` in "
        f"{cfg}{hint} (or override it)"
    )


_IMPORT_ERRORS = ("OptionalImportError", "ErrorDuringImport")


def _missing_package_text(parser, chain, raw, culprit, where, cfg, purpose) -> str | None:
    """The message for a module that is not installed (or a bundle package that is not there)."""
    module = next((m for e in chain if (isinstance(e, ImportError) or type(e).__name__ in _IMPORT_ERRORS)
                   and (m := missing_module(e))), None)
    located = next((m for e in chain if (m := re.search(r"Cannot locate class or function path: '([\w.]+)'", str(e)))), None)
    root = Path(str(parser.get("bundle_root", ".")))
    if module is None and located is not None and "." in located.group(1):
        module = located.group(1).split(".")[0]
        if importlib.util.find_spec(module) is not None:
            return None  # the package is there; the class is not: a typo in the path
    if module is None:
        return None
    if module == "scripts" and not (root / module).exists():
        return (f"{cfg}: cannot build {purpose}: {where} uses the bundle's own `scripts` package, and {root / module} "
                "is not there. Fix: download the whole bundle (configs/, models/ and scripts/ together, e.g. with "
                "`python -m monai.bundle download`)")
    reader_hint = ""
    if module == "itk" and isinstance(raw, dict) and "ITK" in str(raw.get("reader", "")):
        reader_hint = (f", or read the images with nibabel instead (NIfTI inputs): "
                       f"overrides={{'{culprit}#reader': 'NibabelReader'}}")
    extra = " (or pip install 'esegeta_monai[zoo]', which has it)" if pip_name(module) in ZOO_EXTRA else ""
    return (f"{cfg}: cannot build {purpose}: {where} needs the Python package `{pip_name(module)}` (module `{module}`), "
            f"which is not installed. Fix: pip install {pip_name(module)}{extra}{reader_hint}")


#: the packages of the ``zoo`` extra (pyproject.toml): what model-zoo bundles import most often
ZOO_EXTRA = ("einops", "pytorch-ignite", "fire")


def _parse(parser: ConfigParser, raw_config: dict, key: str, cfg: str, purpose: str) -> Any:
    try:
        return parser.get_parsed_content(key)
    except BundleError:
        raise
    except Exception as e:
        raise _explain_failure(parser, raw_config, key, e, cfg, purpose) from e


# ------------------------------------------------------------------------------------ weights


def _state_dict_of(obj: Any, path: Path) -> dict:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for k in ("model", "state_dict", "network", "model_state_dict", "net"):
            if k in obj and isinstance(obj[k], (Mapping, torch.nn.Module)):
                return _state_dict_of(obj[k], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise BundleError(
        f"{path}: no state dict found (got {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        + "). Fix: save the weights with torch.save(net.state_dict(), path) or as {'model': state_dict}"
    )


def _weights_file(parser: ConfigParser, root: Path, weights) -> tuple[Path, str | None]:
    """The weights to load and the key of the network's state dict inside them: ``weights`` when
    given; else the file the config's ``CheckpointLoader`` reads, when it exists; else
    ``models/model.pt`` or the TorchScript ``models/model.ts``."""
    if weights is not None:
        return Path(weights).expanduser(), None
    configured, entry, loader = checkpoint_source(parser)
    candidates = ([configured] if configured is not None else []) + [root / "models" / name for name in DEFAULT_WEIGHTS]
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found, entry if found == configured else None
    named = f"{configured} (read by `{_display_id(loader)}`)" if configured is not None else str(root / "models" / "model.pt")
    others = [str(p) for p in candidates[1:] if p != configured]
    raise BundleError(
        f"{named}: weights file not found (nor {', '.join(others)}). Fix: put "
        "the bundle's trained weights there (e.g. `python -m monai.bundle download`), or pass another file with "
        "weights=/--weights"
    )


def _read_checkpoint(path: Path, device: torch.device, weights_only: bool) -> Any:
    """``torch.load`` of a checkpoint, or a TorchScript archive's state dict."""
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except Exception as error:
        try:  # a TorchScript model (model.ts): its parameters and buffers, not its code
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: still how bundles ship .ts
                return torch.jit.load(str(path), map_location=device).state_dict()
        except Exception:  # noqa: BLE001 - not TorchScript either: report torch.load's error
            raise error from None


def _load_weights(
    network: torch.nn.Module, path: Path, device: torch.device, weights_only: bool, net_key: str, cfg: str,
    entry: str | None = None,
) -> None:
    if not path.is_file():
        raise BundleError(
            f"{path}: weights file not found. Fix: put the bundle's trained weights there (models/model.pt, "
            "e.g. from `python -m monai.bundle download`), or pass another file with weights=/--weights"
        )
    try:
        obj = _read_checkpoint(path, device, weights_only)
    except pickle.UnpicklingError as e:
        if weights_only:
            raise BundleError(
                f"{path}: the file holds Python objects that safe (weights-only) loading refuses "
                f"({_short(e)}). Fix: re-save it as a plain state dict, or, only if you trust where it "
                "comes from, pass weights_only=False (unpickling can run arbitrary code)"
            ) from e
        raise BundleError(f"{path}: cannot read the weights ({_short(e)}). Fix: re-download the file") from e
    except Exception as e:
        raise BundleError(
            f"{path}: cannot read the weights ({_short(e)}). The file may be truncated, a TorchScript model "
            "or another format. Fix: re-download it, or give a torch.save'd state dict with weights=/--weights"
        ) from e
    if entry is not None and isinstance(obj, Mapping) and isinstance(obj.get(entry), (Mapping, torch.nn.Module)):
        obj = obj[entry]  # the CheckpointLoader's load_dict key (e.g. {"model": "@network"})
    state = _state_dict_of(obj, path)
    expected = network.state_dict()
    prefixed = state and all(k.startswith("module.") for k in state)
    if prefixed and expected and not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel/DDP
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise BundleError(
            f"{path}: the weights do not fit the network built from `{net_key}` in {cfg} "
            f"({type(network).__name__}): {'; '.join(parts)}. Fix: use the weights trained with this "
            f"`{net_key}` (or the `{net_key}` they were trained with), or pass the right file with weights=/--weights"
        )
    try:
        network.load_state_dict(state, strict=True)
    except Exception as e:
        raise BundleError(
            f"{path}: loading the weights into `{net_key}` ({type(network).__name__}) failed: {_short(e)}. "
            "Fix: use the weights trained with this network_def"
        ) from e


# ------------------------------------------------------------------------------------- pieces


def _channel_def(section: Any) -> dict[int, str]:
    if not isinstance(section, Mapping):
        return {}
    cdef = section.get("channel_def")
    if not isinstance(cdef, Mapping):
        return {}
    out = {}
    for k, v in cdef.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def _first(mapping: Any, preferred: str) -> Any:
    if not isinstance(mapping, Mapping) or not mapping:
        return None
    if preferred in mapping:
        return mapping[preferred]
    return next(iter(mapping.values()))


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _quiet(parser: ConfigParser, key: str) -> Any:
    """Parsed value of ``key`` or ``None``, never raising (for optional information)."""
    if key not in parser:
        return None
    try:
        return parser.get_parsed_content(key)
    except Exception as e:  # noqa: BLE001 - optional information only
        logger.debug("bundle key %s could not be parsed: %s", key, e)
        return None


def _inferer_dict(parser: ConfigParser, raw_config: dict, cfg: str, spatial_dims: int | None) -> tuple[dict, Any]:
    info: dict[str, Any] = {k: None for k in WINDOW_SETTINGS}
    if "inferer" not in parser:
        logger.warning("%s: no `inferer` key; the whole image will be given to the network at once", cfg)
        return info, None
    inferer = _parse(parser, raw_config, "inferer", cfg, "the inferer")
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if inferer is None or isinstance(inferer, SimpleInferer):
        return info, inferer
    if not isinstance(inferer, SlidingWindowInferer):
        raise BundleError(
            f"{cfg}: `inferer` is a {type(inferer).__module__}.{type(inferer).__name__}, which esegeta_monai cannot "
            "explain through: it explains through SimpleInferer, SlidingWindowInferer (and its subclasses) and "
            "SliceInferer, whose prediction it reproduces exactly. Fix: if the network's prediction is a plain or "
            'sliding-window forward, override `inferer`, e.g. --bundle-config with {"inferer": {"_target_": '
            '"SlidingWindowInferer", "roi_size": [96, 96, 96]}}'
        )
    try:
        info.update(slice_window_settings(inferer) if is_slice_inferer(inferer) else inferer_settings(inferer, spatial_dims))
    except ConfigError as e:
        raise BundleError(f"{cfg}: `inferer#roi_size`: {e}") from None
    return info, inferer


_NOT_INPUTS = ("label", "seg", "mask", "gt")


def _samples(root: Path, parser: ConfigParser, image_key: str) -> list[Path]:
    """The bundle's sample inputs: its ``datalist`` when that names existing files, else the
    image files of ``sample/`` or ``samples/`` (label/segmentation/mask files left out)."""
    datalist = _quiet(parser, "datalist")
    out: list[Path] = []
    if isinstance(datalist, (list, tuple)):
        for item in datalist:
            if isinstance(item, Mapping):
                item = item.get(image_key)
            if isinstance(item, (str, os.PathLike)):
                p = Path(item)
                p = p if p.is_absolute() else root / p
                if p.is_file():
                    out.append(p)
    if out:
        return out
    for name in ("sample", "samples"):
        folder = root / name
        if folder.is_dir():
            files = sorted(
                p for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")
                and not any(tag in p.name.lower().replace("-", "_").split(".")[0].split("_") for tag in _NOT_INPUTS)
            )
            if files:
                return files
    return out


# --------------------------------------------------------------------------------------- main


def load_bundle(
    bundle_dir: str | os.PathLike,
    config_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    weights_only: bool = True,
    build_network: bool = True,
    overrides: Mapping[str, Any] | None = None,
    remove_keys: Sequence[str] = (),
    extra_configs: Sequence[str | os.PathLike] = (),
) -> Bundle:
    """Read a MONAI bundle folder into a :class:`Bundle`.

    Args:
        bundle_dir: the bundle folder (with ``configs/`` and ``models/``).
        config_file: the inference config(s) to read, absolute or relative to ``configs/``
            (several are merged in order, as MONAI does). Default: the first of
            ``configs/inference.json``, ``.yaml``, ``.yml``.
        weights: the weights file. Default: ``<bundle>/models/model.pt``. A plain state dict, or a
            dict holding one under ``model`` or ``state_dict`` (MONAI's ``CheckpointSaver`` layout).
        device: where to put the network; also set as the config's ``device`` so that
            ``$torch.device('cuda:0' if ...)`` expressions do not matter.
        weights_only: load the weights with ``torch.load(..., weights_only=True)`` (default): only
            tensors and plain containers are unpickled, so a malicious file cannot run code. Set it
            to ``False`` only for files from a source you trust: full unpickling can execute
            arbitrary Python code.
        build_network: ``False`` skips the network and the weights (to read the preprocessing or the
            inferer only).
        overrides: config ids and new values applied after reading, as ``monai.bundle`` command-line
            overrides are, e.g. ``{"arch_ckpt": "$torch.load(@arch_ckpt_path, map_location='cpu')"}``.
        remove_keys: config ids to delete, e.g. ``["network_def#img_size"]`` for SwinUNETR bundles
            written for MONAI < 1.5.
        extra_configs: override configs merged after the inference config(s), as
            ``monai.bundle run --config_file "[a, b]"`` merges them: paths, or the names of the
            configs shipped with esegeta_monai (``swin_unetr_compat``; see :func:`shipped_config`).

    Returns:
        The :class:`Bundle`.

    Raises:
        BundleError: no bundle / configs folder / inference config, config syntax error, missing or
            unbuildable ``network_def``, broken ``inferer`` or ``preprocessing``, missing, unreadable or
            mismatched weights. Each message names the file or key and says how to fix it.
    """
    root = Path(bundle_dir).expanduser()
    if not root.is_dir():
        raise BundleError(
            f"{root}: no such bundle folder. Fix: give the path of the bundle (the folder with configs/ and models/)"
        )
    root = root.resolve()
    with bundle_import_path(root):  # `scripts.*` of the bundle, as `monai.bundle run` from its folder finds them
        return _read_bundle(root, config_file, weights, torch.device(device), weights_only, build_network, overrides,
                            remove_keys, extra_configs)


def _read_bundle(root: Path, config_file, weights, device: torch.device, weights_only: bool, build_network: bool,
                 overrides, remove_keys, extra_configs) -> Bundle:
    files = _find_configs(root, config_file) + [_extra_config(f) for f in extra_configs]
    cfg = ", ".join(str(f) for f in files)
    for f in files:
        _read_config_file(f)  # syntax errors named with file and line before MONAI reads them
    metadata = _read_metadata(root)

    parser = ConfigParser()
    try:
        parser.read_meta(copy.deepcopy(metadata))
        parser.read_config([str(f) for f in files])
    except Exception as e:  # merging problems (e.g. "a::b" keys into a non-dict)
        raise BundleError(f"{cfg}: cannot read the config: {_short(e)}. Fix: correct the file") from e
    parser["bundle_root"] = str(root)
    parser["device"] = device
    for key, value in (overrides or {}).items():
        try:
            parser[key] = value
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise BundleError(
                f"override `{key}`: cannot set it in {cfg} ({_short(e)}). Fix: use an existing config id"
            ) from e
    for key in remove_keys:
        parent, _, last = ReferenceResolver.normalize_id(key).rpartition(ReferenceResolver.sep)
        try:
            container = parser[parent] if parent else parser.get()
            if isinstance(container, dict):
                container.pop(last, None)
            elif isinstance(container, list):
                container.pop(int(last))
        except (KeyError, ValueError, IndexError) as e:
            raise BundleError(
                f"remove_keys: `{key}` is not in {cfg} ({_short(e)}). Fix: use an existing config id"
            ) from e
    notes = cpu_torch_loads(parser) + reader_fallbacks(parser)  # what the config assumes of the machine
    for note in notes:
        logger.warning("%s: %s", cfg, note)
    # the raw view used in messages, after overrides
    raw_config = copy.deepcopy({k: v for k, v in parser.get().items() if k != "device"})

    image_key = _quiet(parser, "image_key")
    data_format = metadata.get("network_data_format")
    data_format = data_format if isinstance(data_format, Mapping) else {}
    inputs, outputs = data_format.get("inputs"), data_format.get("outputs")
    if not isinstance(image_key, str) or not image_key:
        image_key = next(iter(inputs)) if isinstance(inputs, Mapping) and inputs else "image"
    in_meta = _first(inputs, image_key)
    out_meta = _first(outputs, "pred")

    network = None
    net_key = None
    weights_path = None
    if build_network:
        net_key = "network_def" if "network_def" in parser else ("network" if "network" in parser else None)
        if net_key is None:
            raise BundleError(
                f"{cfg}: no `network_def` (nor `network`) key: the network cannot be built. Fix: add "
                '"network_def": {"_target_": "<network class>", ...} to the config'
            )
        network = _parse(parser, raw_config, net_key, cfg, f"the network (`{net_key}`)")
        if not isinstance(network, torch.nn.Module):
            raise BundleError(
                f"{cfg}: `{net_key}` gives a {type(network).__name__}, not a torch.nn.Module. Fix: give it a "
                '"_target_" naming a network class (third-party classes need their full dotted path)'
            )
        network = network.to(device)
        weights_path, entry = _weights_file(parser, root, weights)
        _load_weights(network, weights_path, device, weights_only, net_key, cfg, entry)
        network.eval()

    preprocessing = None
    if "preprocessing" in parser:
        preprocessing = _parse(parser, raw_config, "preprocessing", cfg, "the preprocessing")
        if preprocessing is not None and not callable(preprocessing):
            raise BundleError(
                f"{cfg}: `preprocessing` gives a {type(preprocessing).__name__}, not a transform. Fix: make it a "
                '{"_target_": "Compose", "transforms": [...]}'
            )
    else:
        logger.info("%s: no `preprocessing` key; images will only be loaded (LoadImaged + EnsureChannelFirstd)", cfg)

    in_channels = _as_int(in_meta.get("num_channels")) if isinstance(in_meta, Mapping) else None
    out_channels = _as_int(out_meta.get("num_channels")) if isinstance(out_meta, Mapping) else None
    spatial_dims = None
    if net_key or "network_def" in parser:
        k = net_key or "network_def"
        if in_channels is None:
            in_channels = _as_int(_quiet(parser, f"{k}#in_channels"))
        spatial_dims = _as_int(_quiet(parser, f"{k}#spatial_dims"))
        if out_channels is None:
            out_channels = _as_int(_quiet(parser, f"{k}#out_channels"))
    if spatial_dims is None and isinstance(in_meta, Mapping) and isinstance(in_meta.get("spatial_shape"), list):
        spatial_dims = len(in_meta["spatial_shape"]) or None

    inferer, inferer_object = _inferer_dict(parser, raw_config, cfg, spatial_dims)
    slice_dim = None
    if is_slice_inferer(inferer_object):  # a 2D network over the slices of volumes: a 3D network to explain
        slice_dim = int(inferer_object.spatial_dim)
        spatial_dims = 3
        network = SliceNetwork(network, slice_dim).eval() if network is not None else None
    if spatial_dims is None and inferer["roi_size"] is not None:
        spatial_dims = len(inferer["roi_size"])

    return Bundle(
        root=root,
        parser=parser,
        network=network,
        preprocessing=preprocessing,
        image_key=image_key,
        inferer=inferer,
        samples=_samples(root, parser, image_key),
        metadata=metadata,
        class_names=_channel_def(out_meta),
        channel_names=_channel_def(in_meta),
        in_channels=in_channels,
        spatial_dims=spatial_dims,
        out_channels=out_channels,
        config_files=files,
        weights_path=weights_path,
        device=device,
        inferer_object=inferer_object,
        slice_dim=slice_dim,
        notes=notes,
    )
