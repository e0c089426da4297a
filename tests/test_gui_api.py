"""The GUI's API through an ASGI test client: the token, the roots' walls, uploads, the registry,
and real jobs — their maps equal those of `esegeta explain`, a cancel stops the processes, and a
restarted server still lists them."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml

with warnings.catch_warnings():  # Starlette ≥ 1 prefers httpx2 for its test client; httpx works
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from esegeta_monai.apps.cli import main
from esegeta_monai.apps.gui import create_app
from esegeta_monai.apps.gui.jobs import JOB_SPEC
from esegeta_monai.apps.gui.server import COOKIE, TEMPLATES


REPO = Path(__file__).resolve().parents[1]
DEMO_ID = "0:vessel_mra_demo"
SAMPLE_ID = "0:vessel_mra_demo/sample/vessel_phantom_0.nii.gz"
SAMPLE = REPO / "bundles" / "vessel_mra_demo" / "sample" / "vessel_phantom_0.nii.gz"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = [{"name": "saliency"}, {"name": "integrated_gradients", "options": {"n_steps": 4}}]
JOB = {"bundle": DEMO_ID, "images": [SAMPLE_ID], "methods": METHODS, "targets": ["argmax:1"], "device": "cpu",
       "figures": False}


def _nifti(path: Path, shape=(6, 5, 4)) -> Path:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    """Root 0: the shipped bundles; root 1: a folder with a file, links out of it, a broken bundle."""
    scans = tmp_path_factory.mktemp("scans")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("SECRET")
    (scans / "inside.txt").write_text("hello")
    (scans / "page.html").write_text("<script>alert(1)</script>")
    (scans / "escape").symlink_to(outside, target_is_directory=True)
    (scans / "escape_file.txt").symlink_to(outside / "secret.txt")
    (scans / "again.txt").symlink_to(scans / "inside.txt")  # a link that stays inside: fine
    broken = scans / "broken_bundle" / "configs"
    broken.mkdir(parents=True)
    (broken / "inference.json").write_text(json.dumps({"network_def": {"_target_": "NoSuchNetwork"}}))
    out = tmp_path_factory.mktemp("gui_out")
    app = create_app(roots=[REPO / "bundles", scans], out=out, token=TOKEN)
    return SimpleNamespace(app=app, anonymous=TestClient(app), client=TestClient(app, headers=AUTH), out=out, scans=scans)


# ------------------------------------------------------------------------------------ the token


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/static/x"), ("GET", "/static/app.js"), ("GET", "/api/methods"), ("GET", "/api/metrics"),
                                         ("GET", "/api/bundles"), ("GET", "/api/jobs"), ("POST", "/api/jobs"),
                                         ("DELETE", "/api/jobs/x"), ("POST", "/api/uploads?name=a.nii"),
                                         ("GET", f"/api/file/{SAMPLE_ID}"), ("GET", "/api/nothing")])
def test_every_route_needs_the_token(gui, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE}=wrong"}, {"Authorization": TOKEN}):
        response = gui.anonymous.request(method, path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.headers["www-authenticate"] == "Bearer"
        if path.startswith("/api"):
            assert "token" in response.json()["error"]
        else:
            assert response.headers["content-type"].startswith("text/html") and "?token=" in response.text
    assert gui.anonymous.get(f"/api/file/{SAMPLE_ID}?token=wrong", follow_redirects=False).status_code == 401


def test_the_token_url_sets_a_strict_http_only_cookie_and_redirects(gui):
    browser = TestClient(gui.app)
    response = browser.get(f"/?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert browser.get("/api/roots").status_code == 200  # the cookie alone is enough now
    page = browser.get("/")
    if (TEMPLATES / "index.html.j2").is_file():
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    else:
        assert page.status_code == 500 and "template is missing" in page.text
    other = browser.get(f"/api/jobs?token={TOKEN}&x=1", follow_redirects=False)
    assert other.status_code == 303 and other.headers["location"] == "/api/jobs?x=1"
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"


# ------------------------------------------------------------------------------------- the walls


@pytest.mark.parametrize("url", [
    "/api/file/0:%2e%2e/pyproject.toml",  # `..` (decoded once by the server)
    "/api/file/0:vessel_mra_demo/%2e%2e/%2e%2e/pyproject.toml",
    "/api/file/0:/etc/passwd",  # absolute
    "/api/file/0:%252e%252e/pyproject.toml",  # double-encoded: still encoded after one decoding
    "/api/file/1:escape/secret.txt",  # a symbolic link inside the root that leads out of it
    "/api/file/1:escape_file.txt",
    "/api/file/1:inside.txt%00.png",  # NUL
    "/api/files?dir=0:..",
    "/api/files?dir=1:escape",
    "/api/files?dir=0:%2e%2e",
    "/api/bundles/0:%2e%2e/layers",
])
def test_paths_out_of_the_roots_are_refused(gui, url):
    response = gui.client.get(url)
    assert response.status_code == 403, response.text
    assert "refused" in response.json()["error"] and "SECRET" not in response.text


def test_missing_files_and_unknown_roots_are_404_and_links_inside_a_root_work(gui):
    assert gui.client.get("/api/file/0:no_such.nii.gz").status_code == 404
    assert gui.client.get("/api/file/7:a.nii.gz").status_code == 404
    assert gui.client.get("/api/file/no-colon").status_code == 400
    assert gui.client.get("/api/file/1:again.txt").text == "hello"
    listing = gui.client.get("/api/files", params={"dir": "1:"}).json()
    names = {e["name"]: e for e in listing["entries"]}
    assert set(names) == {"inside.txt", "again.txt", "page.html", "broken_bundle"}  # the links out are not listed
    assert names["inside.txt"] == {"id": "1:inside.txt", "name": "inside.txt", "kind": "file", "size": 5}
    assert gui.client.get("/api/files").json()["entries"][-1]["id"] == "out:"
    page = gui.client.get("/api/file/1:page.html")  # a page under a root is shown, but runs no script
    assert page.headers["content-type"].startswith("text/html") and "script-src 'none'" in page.headers["content-security-policy"]


def test_a_scan_is_served_as_its_gzip_bytes(gui):
    response = gui.client.get(f"/api/file/{SAMPLE_ID}")
    assert response.status_code == 200 and response.content == SAMPLE.read_bytes()
    assert response.headers["content-type"] == "application/octet-stream" and "content-encoding" not in response.headers
    download = gui.client.get(f"/api/file/{SAMPLE_ID}?download=1")
    assert download.headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize("job,status,words", [
    ({**JOB, "images": ["0:../pyproject.toml"]}, 403, ["'..'"]),
    ({**JOB, "images": ["/etc/passwd"]}, 400, ["not a file id"]),
    ({**JOB, "targets": ["mask:1:/etc/passwd"]}, 400, ["looks like a path"]),
    ({**JOB, "methods": [{"name": "feature_ablation", "options": {"features": "/etc/passwd"}}]}, 400, ["looks like a path"]),
    ({**JOB, "bundle": "1:escape"}, 403, ["outside root"]),
])
def test_jobs_take_files_only_from_the_roots(gui, job, status, words):
    response = gui.client.post("/api/jobs", json=job)
    assert response.status_code == status
    assert all(w in response.json()["error"] for w in words), response.json()


# ---------------------------------------------------------------------------------------- uploads


@pytest.fixture
def small_uploads(gui):
    """A GUI on the same output folder that takes uploads of at most 10 KiB."""
    app = create_app(roots=[gui.scans], out=gui.out, token=TOKEN, max_upload_mb=10 / 1024)
    return TestClient(app, headers=AUTH)


def _uploads(out: Path) -> list[str]:
    return sorted(p.relative_to(out / "uploads").as_posix() for p in (out / "uploads").rglob("*") if p.is_file()) \
        if (out / "uploads").is_dir() else []


def test_uploads_too_large_are_refused_with_the_limit(gui, small_uploads):
    before = _uploads(gui.out)
    for body in (b"\0" * 20_000, (b"\0" * 4096 for _ in range(5))):  # with Content-Length, and streamed without it
        response = small_uploads.post("/api/uploads?name=big.nii.gz", content=body)
        assert response.status_code == 413
        assert "big.nii.gz" in response.json()["error"] and "limit of 10 KiB" in response.json()["error"]
        assert "--max-upload-mb" in response.json()["error"]
    assert _uploads(gui.out) == before  # nothing left behind


def test_uploads_that_are_not_what_their_name_says_are_refused(gui, tmp_path):
    before = _uploads(gui.out)
    response = gui.client.post("/api/uploads?name=scan.nii.gz", content=b"this is text, not a scan\n" * 40)
    assert response.status_code == 415
    message = response.json()["error"]
    assert message.startswith("scan.nii.gz is not a NIfTI image") and "'n+1' or 'ni1' at byte 344 after gunzip" in message
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 400
    response = gui.client.post("/api/uploads?name=scan.nii.gz", content=png)
    assert response.status_code == 415 and "is a PNG file" in response.json()["error"] and ".png" in response.json()["error"]
    plain = _nifti(tmp_path / "plain.nii").read_bytes()
    response = gui.client.post("/api/uploads?name=scan.nii.gz", content=plain)  # not gzipped, named .gz
    assert response.status_code == 415 and "remove .gz" in response.json()["error"]
    assert gui.client.post("/api/uploads?name=notes.docx", content=plain).status_code == 415
    assert gui.client.post("/api/uploads?name=a.nii", content=b"").status_code == 400
    assert _uploads(gui.out) == before


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii", "../../evil name.nii.gz"])
def test_real_nifti_uploads_are_stored_under_the_output_folder(gui, tmp_path, name):
    source = _nifti(tmp_path / ("a.nii" if name.endswith(".nii") else "a.nii.gz"))
    response = gui.client.post("/api/uploads", params={"name": name}, content=source.read_bytes(),
                               headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["kind"] == "nifti" and upload["size"] == source.stat().st_size
    assert upload["id"].startswith("out:uploads/") and upload["id"].endswith("/" + upload["name"])
    assert upload["name"] == Path(name).name.replace(" ", "_")
    stored = gui.out / upload["id"].partition(":")[2]
    assert stored.read_bytes() == source.read_bytes()
    assert np.array_equal(nib.load(str(stored)).get_fdata(), nib.load(str(source)).get_fdata())
    assert gui.client.get(f"/api/file/{upload['id']}").content == source.read_bytes()
    if name.endswith(".gz"):
        assert gzip.decompress(stored.read_bytes())[344:348] == b"n+1\0"


# ------------------------------------------------------------------------------ registry, bundles


def test_the_registry_is_what_esegeta_methods_json_prints(gui, capsys):
    assert main(["methods", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    served = gui.client.get("/api/methods").json()
    assert served == printed
    steps = next(p for p in next(m for m in served if m["name"] == "integrated_gradients")["params"] if p["name"] == "n_steps")
    assert steps == {"name": "n_steps", "default": 50, "help": "number of integration steps", "expects": "a positive int",
                     "choices": None, "type": "int", "nullable": False}
    kind = next(p for p in next(m for m in served if m["name"] == "smoothgrad")["params"] if p["name"] == "nt_type")
    assert kind["choices"] == ["smoothgrad", "smoothgrad_sq", "vargrad"] and kind["type"] == "str"


def test_the_metric_catalogue_is_served_by_family(gui):
    from esegeta_monai.evaluation import METRICS

    served = gui.client.get("/api/metrics").json()
    assert {m["name"] for m in served["metrics"]} == set(METRICS)
    order = [served["families"].index(m["family"]) for m in served["metrics"]]
    assert order == sorted(order)
    for metric in served["metrics"]:
        assert metric == METRICS[metric["name"]].describe() and metric["better"] in ("lower", "higher", None)
    assert [m["name"] for m in served["metrics"] if m["needs_label"]] == [m for m in METRICS if METRICS[m].needs_label]


def test_bundles_are_listed_with_their_metadata(gui):
    bundles = {b["id"]: b for b in gui.client.get("/api/bundles").json()}
    assert {"0:vessel_mra_demo", "0:lesion_cls_2d_demo", "1:broken_bundle"} <= set(bundles)
    demo = bundles[DEMO_ID]
    assert demo["class_names"] == {"0": "background", "1": "vessel"} and demo["samples"] == [SAMPLE_ID]
    assert demo["classifier"] is False and demo["default_targets"] == ["argmax:1"] and demo["spatial_dims"] == 3
    assert demo["window"]["roi_size"] == [64, 64, 64] and demo["config_is_code"] is True
    assert demo["inputs"]["image"]["num_channels"] == 1
    assert bundles["0:lesion_cls_2d_demo"]["classifier"] is True
    assert gui.client.get("/api/bundles/0:vessel_mra_demo").json() == demo
    assert gui.client.get("/api/bundles/0:vessel_mra_demo/sample").status_code == 400


def test_layers_are_those_of_esegeta_layers(gui, capsys):
    assert main(["layers", "--bundle", str(REPO / "bundles" / "vessel_mra_demo")]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    rows = gui.client.get(f"/api/bundles/{DEMO_ID}/layers").json()
    assert [r["name"] for r in rows] == listed
    assert next(r for r in rows if r["name"] == "model.0") == {"name": "model.0", "type": "ResidualUnit", "shape": [1, 8, 32, 32, 32]}
    broken = gui.client.get("/api/bundles/1:broken_bundle/layers")
    assert broken.status_code == 400 and "NoSuchNetwork" in broken.json()["error"]


@pytest.mark.parametrize("change,words", [
    ({"methods": [{"name": "salency"}]}, ["unknown method 'salency'", "did you mean 'saliency'"]),
    ({"methods": [{"name": "integrated_gradients", "options": {"n_steps": -1}}]}, ["invalid n_steps=-1", "a positive int"]),
    ({"methods": [{"name": "integrated_gradients", "options": {"n_stepz": 4}}]}, ["no keyword 'n_stepz'", "did you mean 'n_steps'"]),
    ({"targets": ["argmax:7"]}, ["class 7 does not exist", "2 output channel(s)"]),
    ({"targets": ["argmux:1"]}, ["unknown target kind 'argmux'"]),
    ({"device": "gpu9"}, ["device 'gpu9'"]),
    ({"colour": "red"}, ["unknown key 'colour'"]),
    ({"methods": []}, ["non-empty list of methods"]),
    ({"bundle": "1:"}, ["is not a bundle"]),
])
def test_invalid_jobs_are_refused_before_starting(gui, change, words):
    jobs_before = gui.client.get("/api/jobs").json()
    response = gui.client.post("/api/jobs", json={**JOB, **change})
    assert response.status_code == 400
    assert all(w in response.json()["error"] for w in words), response.json()
    assert gui.client.get("/api/jobs").json() == jobs_before


def test_a_job_request_becomes_the_run_config_of_esegeta_explain(gui):
    from esegeta_monai.apps.gui.api import explain_config

    body = {**JOB, "methods": [{"name": "gradcam"}, {"name": "integrated_gradients", "options": {"n_steps": 4, "baselines": None}},
                               {"name": "saliency", "options": {"abs": False}, "as": "signed"}],
            "targets": ["argmax:0,1"], "layer": "model.1", "images": [SAMPLE_ID, SAMPLE_ID]}
    mapping, planned, bundle = explain_config(body, gui.app.state.gui)
    assert mapping["images"] == [str(SAMPLE.resolve())] and mapping["bundle"] == str(bundle.root)
    assert mapping["methods"] == [{"gradcam": {"layer": "model.1"}}, {"integrated_gradients": {"n_steps": 4}},
                                  {"saliency": {"abs": False, "as": "signed"}}]
    assert planned == 1 * 3 * 2 and mapping["device"] == "cpu" and mapping["figures"] is False


# -------------------------------------------------------------------------------------- real jobs


def _events(client: TestClient, job_id: str, into: list) -> None:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        into.append(("content-type", response.headers["content-type"]))
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                into.append((event, json.loads(line[6:])))


def _wait(client: TestClient, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {job}")


@pytest.fixture(scope="module")
def explained(gui, tmp_path_factory):
    """The demo job through the API and, meanwhile, `esegeta explain` with the same settings."""
    response = gui.client.post("/api/jobs", json=JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    events: list = []
    listener = threading.Thread(target=_events, args=(gui.client, job_id, events))
    listener.start()
    direct = tmp_path_factory.mktemp("direct")
    config = direct / "run.yaml"
    config.write_text(yaml.safe_dump({"bundle": str(REPO / "bundles" / "vessel_mra_demo"), "images": [str(SAMPLE)],
                                      "methods": ["saliency", {"integrated_gradients": {"n_steps": 4}}],
                                      "targets": ["argmax:1"], "device": "cpu"}))
    assert main(["explain", "--config", str(config), "--out", str(direct / "out"), "--no-progress", "--no-figures"]) == 0
    job = _wait(gui.client, job_id)
    listener.join(timeout=30)
    return SimpleNamespace(id=job_id, job=job, events=events, direct=direct / "out")


def test_a_job_makes_the_maps_of_esegeta_explain(gui, explained):
    job = explained.job
    assert job["status"] == "done", job
    assert job["progress"] == {"done": 2, "total": 2, "ok": 2, "failed": 0, "empty": 0}
    assert sorted(r["method"] for r in job["records"]) == ["integrated_gradients", "saliency"]
    for record in job["records"]:
        assert record["status"] == "ok" and record["image_file"] == SAMPLE_ID
        assert record["file"] == f"out:{explained.id}/{record['path']}"
        ours, theirs = nib.load(str(gui.out / explained.id / record["path"])), nib.load(str(explained.direct / record["path"]))
        assert np.abs(ours.get_fdata()).max() > 0
        np.testing.assert_allclose(ours.get_fdata(), theirs.get_fdata(), rtol=1e-5)
        np.testing.assert_array_equal(ours.affine, theirs.affine)


def test_a_map_is_served_as_its_file(gui, explained):
    record = explained.job["records"][0]
    served = gui.client.get(f"/api/file/{record['file']}")
    assert served.status_code == 200 and served.content == (gui.out / explained.id / record["path"]).read_bytes()


def test_the_event_stream_reports_progress_then_the_end(explained):
    assert explained.events[0] == ("content-type", "text/event-stream; charset=utf-8")
    kinds = [kind for kind, _ in explained.events[1:]]
    assert kinds.count("progress") >= 1 and kinds[-1] == "end" and kinds[:-1] == ["progress"] * (len(kinds) - 1)
    assert explained.events[-1][1] == {"id": explained.id, "status": "done"}
    last = explained.events[-2][1]
    assert last["status"] == "done" and last["progress"]["ok"] == 2


def test_jobs_are_listed_again_by_a_restarted_server(gui, explained):
    restarted = TestClient(create_app(roots=[REPO / "bundles"], out=gui.out, token="other"),
                           headers={"Authorization": "Bearer other"})
    listed = {j["id"]: j for j in restarted.get("/api/jobs").json()}
    assert listed[explained.id]["status"] == "done"
    assert listed[explained.id]["progress"] == explained.job["progress"]
    assert listed[explained.id]["methods"] == ["saliency", "integrated_gradients"]


def test_a_restarted_server_settles_jobs_whose_process_is_gone(explained, gui, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    finished = out / "finished"  # every planned map in its journal: done
    shutil.copytree(gui.out / explained.id, finished)
    lost = out / "lost"  # no map: failed, with the log's last words
    lost.mkdir()
    (lost / "log.txt").write_text("INFO starting\nesegeta: error: the disk is full\n")
    for folder in (finished, lost):
        (folder / JOB_SPEC).write_text(json.dumps({"id": folder.name, "kind": "explain", "arguments": ["explain"],
                                                   "status": "running", "pid": dead.pid, "planned": 2}))
    client = TestClient(create_app(roots=[tmp_path], out=out, token=TOKEN), headers=AUTH)
    jobs = {j["id"]: j for j in client.get("/api/jobs").json()}
    assert jobs["finished"]["status"] == "done"
    assert jobs["lost"]["status"] == "failed" and "process is gone" in jobs["lost"]["error"]
    assert "the disk is full" in jobs["lost"]["error"]
    assert json.loads((lost / JOB_SPEC).read_text())["status"] == "failed"  # written back


def test_a_restarted_server_follows_jobs_that_still_run_and_can_cancel_them(tmp_path):
    out = tmp_path / "out"
    processes = {}
    for name, script in (("ending", "import pathlib, sys, time; time.sleep(1.5); pathlib.Path(sys.argv[2], 'ranking.json').write_text('{}')"),
                         ("endless", "import time; time.sleep(120)")):
        folder = out / name
        folder.mkdir(parents=True)
        # a job an earlier server started: its own session, its folder on its command line
        processes[name] = subprocess.Popen([sys.executable, "-c", script, "esegeta_monai", str(folder)], start_new_session=True)
        threading.Thread(target=processes[name].wait, daemon=True).start()  # reaped at once, as init would
        (folder / JOB_SPEC).write_text(json.dumps({"id": name, "kind": "evaluate", "arguments": ["evaluate"],
                                                   "status": "running", "pid": processes[name].pid}))
    client = TestClient(create_app(roots=[tmp_path], out=out, token=TOKEN, max_parallel=2), headers=AUTH)
    assert {j["id"]: j["status"] for j in client.get("/api/jobs").json()} == {"ending": "running", "endless": "running"}
    assert _wait(client, "ending", timeout=30)["status"] == "done"
    assert client.delete("/api/jobs/endless").json() == {"id": "endless", "status": "cancelled"}
    deadline = time.monotonic() + 10  # reaped by its waiting thread a moment later, however busy the machine
    while processes["endless"].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes["endless"].poll() == -15  # SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(processes["endless"].pid, 0)


def _journal_lines(folder: Path) -> int:
    journal = folder / "journal.jsonl"
    return len(journal.read_text().splitlines()) if journal.exists() else 0


def test_cancel_stops_the_job_and_its_processes_and_the_queue_waits(gui, explained):
    slow = {**JOB, "methods": [{"name": "integrated_gradients", "options": {"n_steps": 256}}]}
    first = gui.client.post("/api/jobs", json=slow).json()["id"]
    second = gui.client.post("/api/jobs", json=slow).json()["id"]
    assert gui.client.get(f"/api/jobs/{second}").json()["status"] == "queued"  # one job at a time
    assert gui.client.delete(f"/api/jobs/{second}").json() == {"id": second, "status": "cancelled"}
    deadline = time.monotonic() + 90
    while "job(s) to run" not in gui.client.get(f"/api/jobs/{first}").json()["log_tail"]:  # computing now
        assert time.monotonic() < deadline, gui.client.get(f"/api/jobs/{first}").json()
        time.sleep(0.3)
    job = gui.client.get(f"/api/jobs/{first}").json()
    assert job["status"] == "running"
    pid = job["pid"]
    os.kill(pid, 0)  # alive
    response = gui.client.delete(f"/api/jobs/{first}")
    assert response.status_code == 200 and response.json() == {"id": first, "status": "cancelled"}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nor any process of its group
    lines = _journal_lines(gui.out / first)
    time.sleep(1.5)
    assert _journal_lines(gui.out / first) == lines
    job = gui.client.get(f"/api/jobs/{first}").json()
    assert job["status"] == "cancelled" and job["progress"]["ok"] == 0
    assert gui.client.get(f"/api/jobs/{second}").json()["pid"] is None  # never started
    again = gui.client.delete(f"/api/jobs/{first}")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert gui.client.delete("/api/jobs/nope").status_code == 404


def test_evaluate_runs_esegeta_evaluate_on_a_job(gui, explained):
    bad = gui.client.post(f"/api/jobs/{explained.id}/evaluate", json={"metrics": ["fidelity"]})
    assert bad.status_code == 400 and "unknown metric 'fidelity'" in bad.json()["error"]
    for needs_label in ("localisation", "relevance_rank_accuracy"):
        refused = gui.client.post(f"/api/jobs/{explained.id}/evaluate", json={"metrics": [needs_label]})
        assert refused.status_code == 400 and "need(s) a label file per image" in refused.json()["error"]
    response = gui.client.post(f"/api/jobs/{explained.id}/evaluate", json={"metrics": ["deletion"], "steps": 3})
    assert response.status_code == 201
    job_id = response.json()["id"]
    spec = json.loads((gui.out / job_id / JOB_SPEC).read_text())
    assert spec["kind"] == "evaluate" and spec["parent"] == explained.id
    arguments = spec["arguments"]
    assert arguments[:2] == ["evaluate", "--bundle"] and arguments[arguments.index("--methods") + 1] == "saliency,integrated_gradients"
    assert arguments[arguments.index("--target") + 1] == "argmax:1" and arguments[arguments.index("--steps") + 1] == "3"
    assert arguments[arguments.index("--image") + 1] == str(SAMPLE.resolve())
    assert gui.client.delete(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


# ------------------------------------------------------------------------- a case of several files


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    """A GUI over a bundle that reads two files per case (``image``, ``venous``) and two scans."""
    from case_bundle import make_phases_bundle, write_phases

    folder = tmp_path_factory.mktemp("phases_root")
    make_phases_bundle(folder / "phases")
    arterial, venous = write_phases(folder / "scans")
    other = folder / "scans" / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((9, 9, 9), np.float32), np.eye(4)), str(other))
    app = create_app(roots=[folder], out=tmp_path_factory.mktemp("phases_out"), token=TOKEN)
    return SimpleNamespace(app=app, client=TestClient(app, headers=AUTH), arterial=arterial, venous=venous,
                           out=app.state.gui.jobs.out)


CASE = [["image", "0:scans/arterial.nii.gz"], ["venous", "0:scans/venous.nii.gz"]]
CASE_JOB = {"bundle": "0:phases", "case": CASE, "methods": [{"name": "saliency"}], "targets": ["otsu:1"], "device": "cpu",
            "figures": False, "channel_reduce": "none"}


def test_a_bundle_says_which_files_a_case_is_made_of(phases, gui):
    case = phases.client.get("/api/bundles/0:phases").json()["case"]
    assert case == {"keys": {"required": ["image", "venous"], "optional": []}, "image_key": "image", "several": True,
                    "slots": [{"key": "image", "label": "image"}, {"key": "venous", "label": "venous"}]}
    demo = gui.client.get(f"/api/bundles/{DEMO_ID}").json()["case"]
    assert demo["several"] is False and demo["slots"] == [{"key": "image", "label": "image"}]


@pytest.mark.parametrize("change,status,words", [
    ({"case": [["image", "0:scans/arterial.nii.gz"]]}, 400, ["reads the keys image, venous", "venous is missing"]),
    ({"case": [*CASE, ["arterial", "0:scans/arterial.nii.gz"]]}, 400, ["arterial is not read by it"]),
    ({"case": [["image", "0:scans/arterial.nii.gz"], ["image", "0:scans/other_grid.nii.gz"], CASE[1]]}, 400,
     ["lies on another grid"]),
    ({"case": [CASE[0], ["venous", "0:../outside.nii.gz"]]}, 403, ["'..'"]),
    ({"case": [CASE[0], ["venous", "/etc/passwd"]]}, 400, ["not a file id"]),
    ({"case": [["im age", "0:scans/arterial.nii.gz"]]}, 400, ["is not a key"]),
    ({"case": {"image": "0:scans/arterial.nii.gz"}}, 400, ["list of [key, file id] pairs"]),
    ({"images": ["0:scans/arterial.nii.gz"]}, 400, ["either images", "not both"]),
])
def test_invalid_cases_are_refused_before_starting(phases, change, status, words):
    response = phases.client.post("/api/jobs", json={**CASE_JOB, **change})
    assert response.status_code == status, response.text
    assert all(w in response.json()["error"] for w in words), response.json()
    assert phases.client.get("/api/jobs").json() == []


def test_a_case_job_runs_esegeta_explain_on_its_files(phases, tmp_path):
    """The case becomes the run config's KEY=FILE images; the job's map has one volume per file,
    on the first file's grid, equal to `esegeta explain --image image=… --image venous=…`; an
    evaluation of the job passes the same pairs to `esegeta evaluate`."""
    response = phases.client.post("/api/jobs", json=CASE_JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    run = yaml.safe_load((phases.out / job_id / "run.yaml").read_text())
    assert run["images"] == [f"image={phases.arterial}", f"venous={phases.venous}"]
    direct = tmp_path / "direct"
    assert main(["-q", "explain", "--bundle", run["bundle"], "--image", f"image={phases.arterial}", "--image",
                 f"venous={phases.venous}", "--methods", "saliency", "--target", "otsu:1", "--channel-reduce", "none",
                 "--out", str(direct), "--no-figures", "--device", "cpu"]) == 0
    job = _wait(phases.client, job_id)
    assert job["status"] == "done" and job["progress"]["total"] == 1, job
    (record,) = job["records"]
    assert record["status"] == "ok" and record["image_file"] == "0:scans/arterial.nii.gz"
    assert [e["role"] for e in record["inputs"]] == ["image:image", "image:venous"]
    written = nib.load(str(phases.out / job_id / record["path"]))
    for scan in (phases.arterial, phases.venous):
        assert written.shape == (*nib.load(str(scan)).shape, 2)  # one volume per file
        np.testing.assert_allclose(written.affine, nib.load(str(scan)).affine, atol=1e-5)
    np.testing.assert_allclose(written.get_fdata(), nib.load(str(direct / record["path"])).get_fdata(), rtol=1e-5)
    evaluation = phases.client.post(f"/api/jobs/{job_id}/evaluate", json={"metrics": ["deletion"], "steps": 3})
    arguments = json.loads((phases.out / evaluation.json()["id"] / JOB_SPEC).read_text())["arguments"]
    assert [arguments[i + 1] for i, a in enumerate(arguments) if a == "--image"] == run["images"]
    assert phases.client.delete(f"/api/jobs/{evaluation.json()['id']}").json()["status"] == "cancelled"  # its CLI: test_evaluation
