"""A run makes what people look at — the prediction, figures, scenes, the HTML report — as jobs in
its journal: resumable, and never at the cost of a map."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from esegeta_monai.apps.cli import main
from esegeta_monai.jobs.journal import Journal
from tiny_bundle import SAMPLE_AFFINE, make_tiny_bundle, write_image

METHODS = "saliency,input_x_gradient"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_run")
    bundle = make_tiny_bundle(root / "tiny")
    images = []
    for index, name in enumerate(["first", "second scan"]):
        affine = SAMPLE_AFFINE.copy()
        affine[:3, 3] += 5.0 * index
        images.append(write_image(root / f"{name}.nii.gz", shape=(18 + 2 * index, 26, 14), seed=index, affine=affine))
    return SimpleNamespace(bundle=bundle, images=images)


def explain(tiny, out, *args):
    return main(["-q", "explain", "--bundle", str(tiny.bundle), "--out", str(out), "--no-progress", "--image",
                 *map(str, tiny.images), "--methods", METHODS, *map(str, args)])


def latest(out):
    return Journal(out).latest_by_path()


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert explain(tiny, out) == 0
    return out


def test_the_prediction_is_a_label_map_aligned_with_its_scan(tiny, run):
    for image, folder in zip(tiny.images, ("first", "second_scan")):
        written, source = nib.load(str(run / folder / "prediction.nii.gz")), nib.load(str(image))
        assert written.shape == source.shape and written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
        labels = np.asarray(written.dataobj)
        summary = json.loads((run / folder / "prediction.json").read_text())
        voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
        for index, row in summary["classes"].items():
            assert row["voxels"] == int((labels == int(index)).sum())
            assert row["volume_ml"] == pytest.approx(row["voxels"] * voxel_ml, rel=1e-6)
        assert summary["classes"]["1"]["name"] == "blob"
        (record,) = [r for r in latest(run).values() if r.kind == "prediction" and r.path.startswith(folder + "/")]
        assert record.ok and record.report == summary


def test_every_map_gets_its_figure_and_every_image_a_comparison_and_a_scene(run):
    records = latest(run)
    maps = [r for r in records.values() if r.kind == "map"]
    assert len(maps) == 4 and all(r.ok for r in maps)
    figures = {r.path: r for r in records.values() if r.kind == "figure"}
    for record in maps:
        folder, name = record.path.split("/")
        figure = f"{folder}/figures/{name.removesuffix('.nii.gz')}.png"
        assert figures[figure].ok and figures[figure].inputs[0]["sha256"] == record.sha256
        with Image.open(run / figure) as picture:
            assert picture.width > 400 and len(np.unique(np.asarray(picture.convert("L")))) > 20  # a picture, not a blank
    for folder in ("first", "second_scan"):
        assert figures[f"{folder}/figures/compare_argmax1.png"].ok
        assert records[f"{folder}/scene.mrml"].ok and (run / folder / "scene.mrml").is_file()
    assert (run / "report" / "index.html").is_file()
    view = json.loads((run / "manifest.json").read_text())
    assert {r["kind"] for r in view["records"]} == {"map"}
    assert {r["kind"] for r in view["outputs"]} == {"prediction", "figure", "scene"}


def test_a_rerun_redraws_nothing_and_report_redraws_only_what_is_missing(tiny, run, capsys):
    lines = len(Journal(run).records())
    assert explain(tiny, run) == 0
    assert len(Journal(run).records()) == lines
    (run / "first" / "figures" / "saliency_argmax1.png").unlink()
    assert main(["-q", "report", str(run)]) == 0
    new = Journal(run).records()[lines:]
    assert [(r.kind, r.path) for r in new] == [("figure", "first/figures/saliency_argmax1.png")]
    assert "report:" in capsys.readouterr().out


def test_a_failing_figure_is_recorded_and_costs_no_map(tiny, tmp_path, monkeypatch):
    import esegeta_monai.report.figures as figures

    real = figures.render_map_figure

    def broken(scan, map_path, path, **kwargs):
        if "input_x_gradient" in str(map_path):
            raise RuntimeError("the renderer broke")
        return real(scan, map_path, path, **kwargs)

    monkeypatch.setattr(figures, "render_map_figure", broken)
    out = tmp_path / "out"
    assert explain(tiny, out) == 0  # maps are fine: the run is fine
    records = latest(out)
    failed = [r for r in records.values() if not r.ok]
    assert sorted(r.path for r in failed) == ["first/figures/input_x_gradient_argmax1.png",
                                              "second_scan/figures/input_x_gradient_argmax1.png"]
    assert all("the renderer broke" in r.error and r.kind == "figure" for r in failed)
    assert all(r.ok for r in records.values() if r.kind == "map")
    assert not list(out.rglob("*esegeta-tmp*"))
    html = (out / "report" / "index.html").read_text()
    assert "the renderer broke" in html
    monkeypatch.setattr(figures, "render_map_figure", real)
    assert main(["-q", "report", str(out)]) == 0  # the report command repairs them
    assert all(r.ok for r in latest(out).values())


def test_no_figures_writes_maps_only(tiny, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny, out, "--no-figures") == 0
    assert {r.kind for r in latest(out).values()} == {"map"}
    assert not (out / "report").exists() and not list(out.rglob("*.png"))


def test_slicer_command_names_the_scene(run, capsys):
    assert main(["slicer", str(run), "--image", "first"]) == 0
    printed = capsys.readouterr().out
    assert str((run / "first" / "scene.mrml").resolve()) in printed
    assert main(["-q", "slicer", str(run), "--image", "nobody"]) == 2
    assert main(["-q", "report", str(run.parent / "no such run")]) == 2


def test_workers_make_the_figures_of_their_own_images(tiny, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny, out, "--workers", "2", "--devices", "cpu") == 0
    records = latest(out).values()
    for kind in ("map", "prediction", "figure", "scene"):
        assert any(r.kind == kind for r in records) and all(r.ok for r in records if r.kind == kind)
    workers = {r.path.split("/")[0]: r.worker for r in records if r.kind == "map"}
    for record in records:
        if record.kind in ("figure", "scene"):
            assert record.worker == workers[record.path.split("/")[0]]  # drawn where its maps were made
    assert os.getpid() not in {int(r.worker.split(":")[1]) for r in records}


def test_report_of_an_evaluation_folder_shows_its_tables(tmp_path, capsys):
    from report_fixture import add_evaluation

    add_evaluation(tmp_path)  # `esegeta evaluate --out` writes tables and figures, no journal
    assert main(["-q", "report", str(tmp_path)]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    assert "evaluation" in html.lower() and "<table" in html
    assert main(["-q", "report", str(tmp_path / "empty")]) == 2  # neither a run nor an evaluation


def test_figures_are_never_drawn_over_a_scan_that_changed_after_its_maps(tiny, tmp_path):
    scan = write_image(tmp_path / "scan.nii.gz", shape=(18, 26, 14), seed=3)
    out = tmp_path / "out"
    assert main(["-q", "explain", "--bundle", str(tiny.bundle), "--out", str(out), "--no-progress", "--image", str(scan),
                 "--methods", "saliency", "--no-figures"]) == 0
    write_image(scan, shape=(18, 26, 14), seed=4)  # same name and shape, another image
    assert main(["-q", "report", str(out)]) == 1
    records = [r for r in latest(out).values() if r.kind in ("figure", "scene")]
    assert records and all(r.status == "failed" and "changed since its maps were made" in r.error for r in records)
    assert not list(out.rglob("*.png")) and not (out / "scan" / "scene.mrml").exists()
