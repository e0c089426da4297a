"""The HTML report (esegeta_monai.report.html) of a synthetic output folder (tests/report_fixture.py):
well-formed pages, every link inside the folder, failures and empty targets shown, the
prediction, the evaluation, and a report regenerated from the journal."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from report_fixture import (CLASSIFICATION, FIGURE_ERROR, FIGURE_SIZE, MAP_ERROR, METHODS, ODD, PLAIN, SEGMENTATION,
                            TARGET, add_evaluation, build_output_folder)

from esegeta_monai.jobs.atomic import is_temporary
from esegeta_monai.jobs.journal import Journal
from esegeta_monai.jobs.record import Record
from esegeta_monai.report.html import THUMBNAIL_WIDTH, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# -- a small DOM from the standard library's parser ----------------------------------------
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Node or str
    parent: Node | None = None

    def text(self) -> str:
        return " ".join("".join(c if isinstance(c, str) else f" {c.text()} " for c in self.children).split())

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def kids(self, tag: str) -> list[Node]:
        """The direct children with this tag (not those of nested tables)."""
        return [c for c in self.children if isinstance(c, Node) and c.tag == tag]

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes())]

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}>"
        return found[0]


class TreeBuilder(HTMLParser):
    """Builds :class:`Node` trees and fails on any tag closed out of order or never closed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.open = [self.root]
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.open[-1])
        self.open[-1].children.append(node)
        if "id" in node.attrs:
            self.ids.append(node.attrs["id"])
        if tag not in VOID:
            self.open.append(node)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.open.pop()

    def handle_endtag(self, tag):
        assert tag not in VOID, f"</{tag}>"
        assert self.open[-1].tag == tag, f"</{tag}> closes <{self.open[-1].tag}> at line {self.getpos()[0]}"
        self.open.pop()

    def handle_data(self, data):
        self.open[-1].children.append(data)


def parse(path: Path) -> Node:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    assert [n.tag for n in builder.open] == ["#document"], "unclosed tags"
    assert len(builder.ids) == len(set(builder.ids)), "duplicate ids"
    return builder.root


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    return build_output_folder(tmp_path / "out dir")  # a space in the folder's own path too


@pytest.fixture
def report(folder):
    index = write_report(folder.out, title="Vessel study <pilot>")
    return folder.out, index


def pages(out: Path) -> list[Path]:
    return [out / "report" / "index.html", *sorted((out / "report" / "images").glob("*.html"))]


def image_page(out: Path, name: str) -> Path:
    return out / "report" / "images" / f"{name}.html"


def grid_cell(index: Node, image: str, method: str) -> Node:
    """The index's cell of an image and a method, found through the header's column order."""
    grid = index.find("table", "grid")
    header = [th.find("span", "col-method").text() for th in grid.find("thead").find_all("th")[1:]]
    for row in grid.find("tbody").find_all("tr"):
        if row.find("th").find("a").text() == image:
            return row.find_all("td")[header.index(method)]
    raise AssertionError(f"no row for {image}")


# -- tests ---------------------------------------------------------------------------------
def test_pages_are_written_where_promised(report):
    out, index = report
    assert index == out / "report" / "index.html"
    assert sorted(p.name for p in (out / "report" / "images").iterdir()) == sorted([f"{ODD}.html", f"{PLAIN}.html"])
    css = (out / "report" / "static" / "report.css").read_text()
    assert "position: sticky" in css
    assert not [p for p in (out / "report").rglob("*") if is_temporary(p)]


def test_every_link_resolves_to_a_file_inside_the_folder(report):
    out, _ = report
    root = out.resolve()
    checked = 0
    for page in pages(out):
        tree = parse(page)
        ids = {n.attrs["id"] for n in tree.iter() if "id" in n.attrs}
        for node in tree.iter():
            for attribute in ("src", "href"):
                if attribute not in node.attrs:
                    continue
                url = node.attrs[attribute]
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc and not url.startswith(("/", "\\")), f"{page.name}: {url}"
                if not parts.path:  # an anchor on the same page
                    assert unquote(parts.fragment) in ids, f"{page.name}: {url}"
                    continue
                target = (page.parent / unquote(parts.path)).resolve()
                assert target.is_relative_to(root), f"{page.name}: {url} leaves the folder"
                assert target.is_file(), f"{page.name}: {url} → {target} is missing"
                if parts.fragment:
                    target_ids = {n.attrs["id"] for n in parse(target).iter() if "id" in n.attrs}
                    assert unquote(parts.fragment) in target_ids, f"{page.name}: {url}"
                checked += 1
    assert checked >= 19  # every page's stylesheet and way back, figures, thumbnails, files, the scene


def test_no_page_reaches_outside(report):
    out, _ = report
    for path in [*pages(out), out / "report" / "static" / "report.css"]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?i)\b[a-z][a-z0-9+.-]*://", text), path.name
        assert "@import" not in text and "url(" not in text, path.name
        if path.suffix == ".html":
            assert not parse(path).find_all("script"), "no page needs JavaScript"


def test_odd_image_names_are_quoted_in_links(report):
    out, _ = report
    links = {a.text(): a.attrs["href"] for a in parse(out / "report" / "index.html").find("table", "grid").find_all("a")
             if a.text()}
    assert links[ODD] == "images/case%202%20%23%25%C3%A9.html"
    assert unquote(links[ODD]) == f"images/{ODD}.html"
    odd = parse(image_page(out, ODD))
    assert odd.find("h1").text() == ODD
    assert odd.find("a").attrs["href"] == "../index.html"  # the way back, first on the page


def test_the_grid_has_one_column_per_method_and_target(report):
    out, _ = report
    grid = parse(out / "report" / "index.html").find("table", "grid")
    header = [(th.find("span", "col-method").text(), th.find("span", "col-target").text())
              for th in grid.find("thead").find_all("th")[1:]]
    assert header == [(m, TARGET) for m in METHODS]
    assert [row.find("th").find("a").text() for row in grid.find("tbody").find_all("tr")] == [ODD, PLAIN]


def test_the_thumbnail_is_the_map_figure_scaled_to_its_aspect(report):
    out, _ = report
    cell = grid_cell(parse(out / "report" / "index.html"), PLAIN, "saliency")
    assert "cell-ok" in cell.classes()
    img = cell.find("img")
    assert img.attrs["src"] == f"../{PLAIN}/figures/saliency_{TARGET}.png"
    width, height = FIGURE_SIZE
    assert (int(img.attrs["width"]), int(img.attrs["height"])) == (THUMBNAIL_WIDTH, round(THUMBNAIL_WIDTH * height / width))
    assert cell.find("a").attrs["href"] == f"images/{PLAIN}.html#map-saliency-{TARGET}"


def test_a_failed_map_is_red_with_its_error_as_text(report):
    out, _ = report
    index = parse(out / "report" / "index.html")
    cell = grid_cell(index, ODD, "saliency")
    assert {"cell", "cell-failed"} <= cell.classes()
    assert cell.find("p", "error").text() == MAP_ERROR  # markup in the error shown as text, not run
    assert cell.find("span", "chip-failed").text() == "failed"
    assert not cell.find_all("img")
    page = parse(image_page(out, ODD))
    row = next(tr for tr in page.find("table", "records").find("tbody").find_all("tr") if "row-failed" in tr.classes())
    assert MAP_ERROR in row.find("td", "error").text()


def test_an_empty_target_is_marked(report):
    out, _ = report
    cell = grid_cell(parse(out / "report" / "index.html"), ODD, "input_x_gradient")
    assert "cell-empty" in cell.classes() and "cell-failed" not in cell.classes()
    assert cell.find("span", "chip-empty").text() == "empty"
    assert "empty" in cell.find("p", "empty-note").text()


def test_a_failed_figure_shows_its_error_in_place_of_the_figure(report):
    out, _ = report
    cell = grid_cell(parse(out / "report" / "index.html"), PLAIN, "input_x_gradient")
    assert "cell-ok" in cell.classes()  # the map itself is fine
    assert FIGURE_ERROR in cell.find("div", "placeholder-failed").text()
    assert not cell.find_all("img")
    card = next(f for f in parse(image_page(out, PLAIN)).find_all("figure") if f.attrs.get("id") == f"map-input_x_gradient-{TARGET}")
    assert FIGURE_ERROR in card.find("div", "placeholder-failed").text()


def test_summary_counts_and_runs(report):
    out, _ = report
    index = parse(out / "report" / "index.html")
    assert index.find("h1").text() == "Vessel study <pilot>"
    stats = {s.find("span", "stat-label").text(): s.find("span", "stat-value").text() for s in index.find_all("div", "stat")}
    assert (stats["images"], stats["ok"], stats["failed"], stats["empty"], stats["timeout"]) == ("2", "2", "1", "1", "0")
    assert stats["compute time of the maps"] == "4.30 s"  # 1.5 + 2.5 + 0.25 + 0.05
    (run,) = index.find("table", "runs").find("tbody").kids("tr")
    text = run.text()
    assert "bundles/vessel_mra_demo" in text and "0.2.0-test" in text and "abs=True" in text
    window = {tr.find("th").text(): tr.find("td").text() for tr in run.find("table", "settings").find_all("tr")}
    assert window == {"roi_size": "64×64×64", "overlap": "0.25", "mode": "gaussian", "sw_batch_size": "2"}


def test_image_page_shows_the_segmentation_prediction(report):
    out, _ = report
    page = parse(image_page(out, PLAIN))
    rows = page.find("table", "segmentation").find("tbody").find_all("tr")
    shown = {tr.find_all("td")[1].text(): (tr.find_all("td")[2].text(), tr.find("td", "volume").text()) for tr in rows}
    assert shown == {c["name"]: (f"{c['voxels']:,}", f"{c['volume_ml']:.3f}") for c in SEGMENTATION["classes"].values()}
    assert shown["vessel"] == ("1,607", "1.234")


def test_image_page_shows_the_classification_prediction(report):
    out, _ = report
    page = parse(image_page(out, ODD))
    assert page.find("b", "predicted").text() == "lesion"
    rows = page.find("table", "classification").find("tbody").find_all("tr")
    predicted = [tr for tr in rows if "predicted-row" in tr.classes()]
    assert len(predicted) == 1 and predicted[0].find_all("td")[0].text() == str(CLASSIFICATION["predicted"])
    assert [tr.find_all("td")[3].text() for tr in rows] == ["0.023", "0.977"]


def test_image_page_has_figures_scene_records_and_files(report):
    out, _ = report
    page = parse(image_page(out, PLAIN))
    srcs = [img.attrs["src"] for img in page.find_all("img")]
    assert srcs == [f"../../{PLAIN}/figures/compare_{TARGET}.png", f"../../{PLAIN}/figures/saliency_{TARGET}.png"]
    scene = next(s for s in page.find_all("section") if s.attrs.get("id") == "scene")
    assert scene.find("a").attrs["href"] == f"../../{PLAIN}/scene.mrml"
    assert "File > Load Scene" in scene.text() and f"--image {PLAIN}" in scene.text()
    records = page.find("table", "records").find("tbody").find_all("tr")
    kinds = [(tr.find_all("td")[0].text(), tr.find_all("td")[1].text()) for tr in records]
    assert kinds[:2] == [("map", "saliency"), ("map", "input_x_gradient")]  # maps first, in the grid's order
    assert sorted(kinds[2:]) == [("figure", "compare"), ("figure", "input_x_gradient"), ("figure", "saliency")]
    files = {a.text(): a.attrs["href"] for a in next(s for s in page.find_all("section") if s.attrs.get("id") == "files").find_all("a")}
    assert files[f"saliency_{TARGET}.nii.gz"] == f"../../{PLAIN}/saliency_{TARGET}.nii.gz"
    window = page.find("div", "run-card").find("table", "settings")
    assert {tr.find("th").text() for tr in window.find_all("tr")} == {"roi_size", "overlap", "mode", "sw_batch_size"}


def test_evaluation_appears_only_when_present(folder):
    index = parse(write_report(folder.out))
    assert not [n for n in index.find_all("section") if n.attrs.get("id") == "evaluation"]
    add_evaluation(folder.out)
    index = parse(write_report(folder.out))
    section = next(n for n in index.find_all("section") if n.attrs.get("id") == "evaluation")
    rankings = {t.find("caption").text(): [tr.find_all("td")[1].text() for tr in t.find("tbody").find_all("tr")]
                for t in section.find_all("table", "ranking-table")}
    assert rankings == {"deletion (lower is better)": ["saliency", "input_x_gradient"], "infidelity": ["input_x_gradient"]}
    table = section.find("table", "evaluation-table")
    metrics = [th.text() for th in table.find("thead").find_all("th")[2:]]
    assert metrics == ["deletion", "infidelity"]
    values = {(tr.find_all("td")[1].text()): [td.text() for td in tr.find_all("td")[2:]] for tr in table.find("tbody").find_all("tr")}
    assert values["input_x_gradient"] == ["0.25", "3.5"]
    assert values["saliency"][0] == "0.1235"  # four significant digits of 0.123456
    assert "NaN in the perturbed scores" in table.find("td", "cell-failed").text()
    assert [img.attrs["src"] for img in section.find_all("img")] == ["../deletion_insertion.png"]


def test_rerun_reflects_new_records(report):
    out, _ = report
    journal = Journal(out, fsync=False)
    run = journal.start_run({"bundle": "bundles/vessel_mra_demo", "version": "0.2.1-test", "methods": ["saliency"]})
    (out / ODD / f"saliency_{TARGET}.nii.gz").write_bytes((out / PLAIN / f"saliency_{TARGET}.nii.gz").read_bytes())
    journal.append(Record(f"/data/scans/{ODD}.nii.gz", "saliency", TARGET, "ok", seconds=3.0, run=run,
                          path=f"{ODD}/saliency_{TARGET}.nii.gz"))
    index = parse(write_report(out))
    cell = grid_cell(index, ODD, "saliency")
    assert "cell-ok" in cell.classes() and MAP_ERROR not in cell.text()
    assert "no figure (run `esegeta report" in cell.find("div", "placeholder").text()
    stats = {s.find("span", "stat-label").text(): s.find("span", "stat-value").text() for s in index.find_all("div", "stat")}
    assert (stats["ok"], stats["failed"]) == ("3", "0")
    assert len(index.find("table", "runs").find("tbody").kids("tr")) == 2
    page = parse(image_page(out, ODD))
    assert len(page.find_all("div", "run-card")) == 2  # the first run wrote the empty record, the second the map
    assert "0.2.1-test" in page.text()


def test_autoescape_keeps_markup_in_names_as_text(tmp_path):
    out = tmp_path / "out"
    journal = Journal(out, fsync=False)
    run = journal.start_run({"bundle": "<b>bundle</b>", "methods": [{"name": "saliency", "as": "<i>x</i>", "options": {"a": "<u>"}}]})
    journal.append(Record("<img src=x>.nii.gz", "<i>x</i>", "t<1>", "failed", error="a < b & c > d", path="scan/x.nii.gz", run=run))
    index = parse(write_report(out))
    assert not index.find_all("i") and not index.find_all("u") and len(index.find_all("img")) == 0
    assert "<i>x</i>" in index.find("table", "grid").find("thead").text()
    assert index.find("p", "error").text() == "a < b & c > d"


def test_missing_figures_and_failed_scenes_are_explained(folder):
    out = folder.out
    (out / PLAIN / "figures" / f"saliency_{TARGET}.png").unlink()  # recorded ok, then lost
    Journal(out, fsync=False).append(Record(f"/data/scans/{ODD}.nii.gz", "slicer", "all", "failed", run=folder.run,
                                            kind="scene", error="the label map is missing", path=f"{ODD}/scene.mrml"))
    index = parse(write_report(str(out)))
    assert index.find("h1").text() == "vessel_mra_demo — out dir"  # the default title: bundle — folder
    cell = grid_cell(index, PLAIN, "saliency")
    assert not cell.find_all("img") and "missing" in cell.find("div", "placeholder").text()
    scene = next(s for s in parse(image_page(out, ODD)).find_all("section") if s.attrs.get("id") == "scene")
    assert "the label map is missing" in scene.find("p", "error").text() and not scene.find_all("a")
