"""The package's layers point one way (DESIGN.md §4), checked from every import statement,
those inside functions included: apps → report → monai → jobs → explainer → methods → core."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "esegeta_monai"

#: layer of a module by its dotted name's prefix (longest prefix wins); higher may import lower
LAYERS = {
    "esegeta_monai.errors": 0,
    "esegeta_monai.core": 1,
    "esegeta_monai.methods": 2,
    "esegeta_monai.explainer": 3,
    "esegeta_monai.maps": 3,
    "esegeta_monai.evaluation": 3,
    "esegeta_monai.jobs": 4,
    "esegeta_monai.monai": 5,
    "esegeta_monai.demo": 5,
    "esegeta_monai.transforms": 5,  # v0.1 paths kept for bundle configs
    "esegeta_monai.handlers": 5,
    "esegeta_monai.report": 6,
    "esegeta_monai.apps": 7,
    "esegeta_monai.__main__": 7,
}
NAMES = {0: "errors", 1: "core", 2: "methods", 3: "explainer", 4: "jobs", 5: "monai", 6: "report", 7: "apps"}


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imports_of(path: Path, module: str):
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_every_module_has_a_layer():
    unplaced = [name for name, _ in modules() if name != "esegeta_monai" and layer_of(name) is None]
    assert not unplaced, f"modules without a layer in tests/test_layering.py: {unplaced}"


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_imports_point_down(name, path):
    if name == "esegeta_monai":  # the package's facade re-exports the public API
        return
    own = layer_of(name)
    upward = []
    for imported in set(imports_of(path, name)):
        target = layer_of(imported)
        if target is not None and target > own:
            upward.append(f"{imported} ({NAMES[target]})")
    assert not upward, f"{name} ({NAMES[own]}) imports upward: {sorted(upward)}"


def test_methods_never_import_the_explainer():
    for name, path in modules():
        if name.startswith("esegeta_monai.methods"):
            assert not any(i.startswith("esegeta_monai.explainer") for i in imports_of(path, name)), name
