"""The README stays honest: its method table matches the registry and its examples run."""

import re
from pathlib import Path

import pytest

from esegeta_monai.methods import available_methods

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_method_table_lists_exactly_the_registered_methods():
    text = README.read_text()
    table = text.split("### Methods", 1)[1].split("\n\n", 2)[1]
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M)
    assert sorted(names) == available_methods()


def test_metric_table_lists_exactly_the_catalogue_with_its_directions():
    from esegeta_monai.evaluation import METRICS

    text = README.read_text()
    table = text.split("| metric | what it measures |", 1)[1].split("\n\n", 1)[0]
    cell = r"((?:[^|\\]|\\.)+)"  # a cell, escaped pipes (\\|) inside
    rows = re.findall(rf"^\| ((?:`[a-z_]+`(?:, )?)+) \|{cell}\|{cell}\|", table, flags=re.M)
    rows = [(names, better) for names, _, better in rows]
    listed = {name: better for names, better in rows for name in re.findall(r"`([a-z_]+)`", names)}
    assert sorted(listed) == sorted(METRICS)
    for name, better in listed.items():
        expected = METRICS[name].better or "descriptive"
        assert expected in better, (name, better)
    assert f"The catalogue: {len(METRICS)} metrics" in text
    assert (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text().count("`quantus.") >= 17


@pytest.mark.parametrize("index", [0, 1, 2])
def test_python_examples_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(README.parent)
    code = python_blocks()[index].replace('"saliency.nii.gz"', repr(str(tmp_path / "saliency.nii.gz")))
    code = code.replace('output_dir="maps"', f"output_dir={str(tmp_path / 'maps')!r}")
    namespace: dict = {}
    exec(compile(code, f"README python block {index}", "exec"), namespace)
    attribution = namespace["attribution"]
    assert attribution.ndim >= 4 and float(attribution.abs().sum()) > 0


def test_cohort_example_runs_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(README.parent)
    (code,) = [block for block in python_blocks() if "run_explanations" in block]
    code = code.replace('"/tmp/esegeta_cohort"', repr(str(tmp_path / "cohort")))
    namespace: dict = {}
    exec(compile(code, "README cohort block", "exec"), namespace)
    assert namespace["result"].summary["counts"]["ok"] == 1
    exec(compile(code, "README cohort block", "exec"), namespace)
    assert namespace["result"].summary["counts"] == {"ok": 0, "failed": 0, "timeout": 0, "empty": 0, "skipped": 1}
