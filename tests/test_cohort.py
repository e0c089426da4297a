"""Cohorts (issue 10): inputs, unique names, the journal, resume, kills, concurrent runs, workers, torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from esegeta_monai.apps.cli import main
from esegeta_monai.jobs.atomic import remove_stale_temporaries, temporary_path
from esegeta_monai.jobs.journal import Journal
from esegeta_monai.jobs.plan import reserve_names
from esegeta_monai.jobs.record import Record, worker_name
from esegeta_monai.jobs.workers import WorkerSpec, run_in_workers

sys.path.insert(0, str(Path(__file__).parent))
from cohort_helpers import failing_factory, rendezvous_executor_factory, toy_executor_factory  # noqa: E402
from tiny_bundle import SAMPLE_AFFINE, make_tiny_bundle, write_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny bundle and four scans, each with its own shape and affine; two share a file name."""
    root = tmp_path_factory.mktemp("cohort")
    bundle = make_tiny_bundle(root / "tiny")
    images = []
    for index, (folder, name) in enumerate([("s1", "a"), ("s2", "a"), ("s3", "a_2"), ("s4", "b")]):
        affine = SAMPLE_AFFINE.copy()
        affine[:3, 3] += 7.0 * index
        affine[0, 0] *= 1 + 0.1 * index
        (root / "scans" / folder).mkdir(parents=True)
        images.append(write_image(root / "scans" / folder / f"{name}.nii.gz", shape=(18 + index, 26, 14), seed=index, affine=affine))
    return SimpleNamespace(root=root, bundle=bundle, images=images)


def explain(cohort, out, *args):
    """The command on the cohort; maps only (figures and predictions: tests/test_report_run.py)."""
    return main(["-q", "explain", "--bundle", str(cohort.bundle), "--out", str(out), "--no-progress", "--no-figures",
                 *map(str, args)])


def records(out):
    return json.loads((out / "manifest.json").read_text())["records"]


def journal_records(out):
    return Journal(out).records()


def assert_aligned(map_path, image_path):
    written, source = nib.load(str(map_path)), nib.load(str(image_path))
    assert written.shape[:3] == source.shape[:3], (map_path, image_path)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    return written.get_fdata()


def snapshot(out):
    """Every map file with its inode and modification time: a rewritten file changes them."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.rglob("*.nii.gz"))}


def temporaries(out):
    return [p for p in out.rglob("*") if "esegeta-tmp" in p.name or p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------- inputs
def test_image_takes_several_files_and_globs(cohort, tmp_path):
    out = tmp_path / "out"
    pattern = cohort.root / "scans" / "s[34]" / "*.nii.gz"  # quoted: expanded by esegeta, not the shell
    assert explain(cohort, out, "--image", cohort.images[0], cohort.images[1], "--image", pattern, "--methods", "saliency") == 0
    found = {r["image"] for r in records(out)}
    assert {str(Path(p)) for p in found} == {str(p) for p in cohort.images}
    for record in records(out):
        assert_aligned(record["output"], record["image"])
    assert explain(cohort, tmp_path / "none", "--image", cohort.root / "scans" / "*.nrrd") == 2  # a pattern without files


def test_images_lists_datalist_csv_text_and_folder(cohort, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    relative = [os.path.relpath(p, lists) for p in cohort.images]
    (lists / "cohort.json").write_text(json.dumps({"training": [], "testing": [{"image": relative[0], "label": "x.nii.gz"},
                                                                               {"image": relative[1]}, {"image": relative[0]}]}))
    (lists / "cohort.csv").write_text("image,label\n" + f"{relative[2]},\n")
    (lists / "cohort.txt").write_text(f"# one per line\n{cohort.images[3]}\n")
    out = tmp_path / "out"
    assert explain(cohort, out, "--images", lists / "cohort.json", "--images", lists / "cohort.csv",
                   "--images", lists / "cohort.txt", "--methods", "saliency") == 0
    assert sorted(Path(r["image"]).resolve() for r in records(out)) == sorted(p.resolve() for p in cohort.images)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(cohort.images[0], folder / "a.nii.gz")
    shutil.copy(cohort.images[0], folder / "a_label.nii.gz")  # a label next to its scan: not explained
    folder_out = tmp_path / "folder_out"
    assert explain(cohort, folder_out, "--images", folder, "--methods", "saliency") == 0
    assert [Path(r["image"]).name for r in records(folder_out)] == ["a.nii.gz"]


# ---------------------------------------------------------------------------------------- names
def test_same_file_names_in_different_folders_get_their_own_maps(cohort, tmp_path):
    out = tmp_path / "out"
    assert explain(cohort, out, "--image", *cohort.images[:3], "--methods", "saliency") == 0
    written = records(out)
    assert sorted(Path(r["output"]).parent.name for r in written) == ["a_2", "a__s1", "a__s2"]
    maps = [assert_aligned(r["output"], r["image"]) for r in written]  # each aligned with its own input
    assert len({m.shape for m in maps}) == 3
    # a later run with another image of the same name keeps the names it gave
    assert explain(cohort, out, "--image", *cohort.images[:3], "--methods", "saliency,input_x_gradient") == 0
    assert sorted({Path(r["output"]).parent.name for r in records(out)}) == ["a_2", "a__s1", "a__s2"]


def test_mask_files_with_the_same_name_give_two_maps(cohort, tmp_path):
    image = cohort.images[3]
    source = nib.load(str(image))
    masks = []
    for folder, box in (("mA", slice(2, 9)), ("mB", slice(10, 17))):
        data = np.zeros(source.shape, np.uint8)
        data[box, 5:20, 3:11] = 1
        (tmp_path / folder).mkdir()
        masks.append(tmp_path / folder / "roi.nii.gz")
        nib.save(nib.Nifti1Image(data, source.affine), str(masks[-1]))
    out = tmp_path / "out"
    assert explain(cohort, out, "--image", image, "--methods", "saliency", "--target", f"mask:1:{masks[0]}",
                   "--target", f"mask:1:{masks[1]}") == 0
    written = records(out)
    assert sorted(r["target"] for r in written) == ["mask1_roi__mA", "mask1_roi__mB"]
    first, second = (assert_aligned(r["output"], image) for r in sorted(written, key=lambda r: r["target"]))
    assert not np.allclose(first, second)


# --------------------------------------------------------------------------------------- resume
def test_rerun_skips_what_is_done_and_reruns_what_changed(cohort, tmp_path):
    scans = tmp_path / "scans"
    shutil.copytree(cohort.root / "scans" / "s1", scans / "s1")
    shutil.copytree(cohort.root / "scans" / "s4", scans / "s4")
    images = [scans / "s1" / "a.nii.gz", scans / "s4" / "b.nii.gz"]
    config = tmp_path / "run.yaml"
    config.write_text("methods: [saliency, {integrated_gradients: {n_steps: 4}}]\n")
    out = tmp_path / "out"
    run = ["--config", config, "--image", *images]
    assert explain(cohort, out, *run) == 0
    first, lines = snapshot(out), len(journal_records(out))
    assert len(first) == 4 and lines == 4

    assert explain(cohort, out, *run) == 0  # everything done: nothing runs, nothing is rewritten
    assert snapshot(out) == first and len(journal_records(out)) == lines

    write_image(images[1], shape=(21, 26, 14), seed=9, affine=nib.load(str(images[1])).affine)  # a changed image
    assert explain(cohort, out, *run) == 0
    new = journal_records(out)[lines:]
    assert sorted((Path(r.image).name, r.method) for r in new) == [("b.nii.gz", "integrated_gradients"), ("b.nii.gz", "saliency")]
    lines = len(journal_records(out))

    config.write_text("methods: [saliency, {integrated_gradients: {n_steps: 6}}]\n")  # a changed option
    assert explain(cohort, out, *run) == 0
    new = journal_records(out)[lines:]
    assert sorted(r.method for r in new) == ["integrated_gradients", "integrated_gradients"]
    lines = len(journal_records(out))

    assert explain(cohort, out, *run, "--force") == 0
    assert len(journal_records(out)) == lines + 4
    assert all(r["status"] == "ok" for r in records(out)) and len(records(out)) == 4


def test_failed_jobs_are_retried_and_stale_maps_removed(cohort, tmp_path):
    out = tmp_path / "out"
    image = cohort.images[3]
    assert explain(cohort, out, "--image", image, "--methods", "saliency") == 0
    path = Path(records(out)[0]["output"])
    assert path.exists()
    assert explain(cohort, out, "--image", image, "--methods", "saliency", "--force", "--timeout", "1e-9") == 1
    (record,) = records(out)
    assert record["status"] == "timeout" and "removed" in record["error"] and not path.exists()
    assert explain(cohort, out, "--image", image, "--methods", "saliency") == 0  # not ok before: retried
    assert records(out)[0]["status"] == "ok" and path.exists()


def test_an_altered_map_is_recomputed(cohort, tmp_path):
    out = tmp_path / "out"
    assert explain(cohort, out, "--image", cohort.images[3], "--methods", "saliency") == 0
    path = Path(records(out)[0]["output"])
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other content, new time stamp
    assert explain(cohort, out, "--image", cohort.images[3], "--methods", "saliency") == 0
    assert len(journal_records(out)) == 2 and records(out)[0]["sha256"] == journal_records(out)[0].sha256


def test_manifest_command_regenerates_the_view(cohort, tmp_path):
    out = tmp_path / "out"
    assert explain(cohort, out, "--image", cohort.images[3], "--methods", "saliency") == 0
    (out / "manifest.json").unlink()
    assert main(["-q", "manifest", str(out)]) == 0
    assert records(out)[0]["status"] == "ok"
    assert main(["-q", "manifest", str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------------ kills and concurrent runs
def _command(cohort, out, *args):
    return [sys.executable, "-m", "esegeta_monai", "-q", "explain", "--bundle", str(cohort.bundle), "--out", str(out),
            "--no-progress", "--no-figures", *map(str, args)]


def test_a_killed_run_resumes_with_every_job_done_once(cohort, tmp_path):
    out = tmp_path / "out"
    args = ["--image", *cohort.images, "--config", tmp_path / "run.yaml"]
    (tmp_path / "run.yaml").write_text("methods: [saliency, {integrated_gradients: {n_steps: 48}}]\n")
    process = subprocess.Popen(_command(cohort, out, *args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "journal.jsonl").exists() and len(journal_records(out)) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(journal_records(out))
    assert 3 <= done_before < 8
    stray = temporary_path(out / "a__s1" / "saliency_argmax1.nii.gz")  # what a kill during a write leaves
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"half a map")
    os.rename(stray, stray.with_name(stray.name.replace(f".{os.getpid()}@", ".999999999@")))

    assert explain(cohort, out, *args) == 0
    ok = [r for r in journal_records(out) if r.ok]
    assert sorted(r.path for r in ok) == sorted({r.path for r in ok}) and len(ok) == 8  # each job once
    assert not temporaries(out)
    assert len(records(out)) == 8 and all(r["status"] == "ok" for r in records(out))


def test_two_runs_into_one_folder_keep_all_records(cohort, tmp_path):
    out = tmp_path / "out"
    images = ["--image", *cohort.images[:2]]
    runs = [subprocess.Popen(_command(cohort, out, *images, "--methods", method), env=ENV, stderr=subprocess.PIPE)
            for method in ("saliency", "input_x_gradient")]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read().decode()[-2000:]
    view = json.loads((out / "manifest.json").read_text())
    assert len(view["runs"]) == 2
    assert sorted((Path(r["output"]).parent.name, r["method"]) for r in view["records"]) == sorted(
        (folder, method) for folder in ("a__s1", "a__s2") for method in ("saliency", "input_x_gradient"))


# ------------------------------------------------------------------------------- parallel runs
def _maps_and_records(out):
    view = records(out)
    maps = {r["path"]: nib.load(str(out / r["path"])).get_fdata() for r in view}
    return {(r["path"], r["key"], r["status"]) for r in view}, maps


@pytest.fixture(scope="module")
def single_process(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    assert explain(cohort, out, "--image", *cohort.images, "--methods", "saliency,input_x_gradient") == 0
    return _maps_and_records(out)


def _assert_same(result, reference):
    assert result[0] == reference[0]
    for path, values in reference[1].items():
        np.testing.assert_allclose(result[1][path], values, rtol=1e-5, atol=1e-6 * np.abs(values).max())


def test_two_workers_equal_one_process(cohort, single_process, tmp_path):
    out = tmp_path / "out"
    assert explain(cohort, out, "--image", *cohort.images, "--methods", "saliency,input_x_gradient", "--workers", "2",
                   "--devices", "cpu") == 0
    _assert_same(_maps_and_records(out), single_process)
    workers = {r.worker for r in journal_records(out)}
    # The jobs ran in child processes; which worker takes which image depends on start-up times
    # (a worker ready first may take them all): test_two_workers_share_one_queue pins that down.
    assert 1 <= len(workers) <= 2 and worker_name() not in workers


def test_two_workers_share_one_queue(tmp_path):
    units = [{"name": name, "folder": str(tmp_path)} for name in ("u1", "u2")]
    seen = []
    specs = [WorkerSpec(0, "cpu", 1), WorkerSpec(1, "cpu", 1)]
    assert run_in_workers(units, rendezvous_executor_factory, specs, lambda i, r: seen.append(r),
                          lambda i, reason, done: pytest.fail(reason), record_path=lambda r: r["path"]) is None
    assert sorted(r["path"] for r in seen) == ["u1", "u2"]
    assert len({r["pid"] for r in seen}) == 2 and os.getpid() not in {r["pid"] for r in seen}


def test_torchrun_two_ranks_equal_one_process(cohort, single_process, tmp_path):
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "-m", "esegeta_monai",
               *_command(cohort, out, "--image", *cohort.images, "--methods", "saliency,input_x_gradient")[3:]]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same(_maps_and_records(out), single_process)
    assert sorted({r.worker.rsplit("/", 1)[-1] for r in journal_records(out)}) == ["rank0", "rank1"]
    assert "8/8 maps" in done.stdout  # rank 0 reports every rank's jobs


def test_a_dying_worker_loses_only_its_own_unit():
    units = [{"name": "ok1", "jobs": ["a", "b"]}, {"name": "die", "jobs": ["c"]}, {"name": "ok2", "jobs": ["d"]}]
    seen, lost = [], []
    specs = [WorkerSpec(0, "cpu", 1), WorkerSpec(1, "cpu", 1)]
    error = run_in_workers(units, toy_executor_factory, specs, lambda i, r: seen.append(r["path"]),
                           lambda i, reason, done: lost.append((units[i]["name"], reason)), record_path=lambda r: r["path"])
    assert error is None
    assert sorted(seen) == ["a", "b", "d"]
    assert [name for name, _ in lost] == ["die"] and "died" in lost[0][1]
    assert run_in_workers(units, failing_factory, specs[:1], lambda i, r: None, lambda i, reason, done: None) == \
        "RuntimeError: cannot start on cpu"


# ------------------------------------------------------------------------------ journal, atomic
def _append_many(folder, writer, count):
    journal = Journal(folder)
    for i in range(count):
        journal.append(Record(f"img{writer}", "saliency", "argmax1", "ok", path=f"w{writer}/{i}.nii.gz"))


def test_concurrent_writers_never_lose_a_line(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # four writers at once (fork: no second import of torch)
    processes = [context.Process(target=_append_many, args=(tmp_path, w, 60)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert len(Journal(tmp_path).records()) == 240
    assert all(json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines())


def test_a_planner_reading_after_another_run_published_keeps_that_runs_names(tmp_path):
    # the race CI once hit: run B planned after run A had published its first map ("a__s1") and
    # named the other "a" — names are reserved at planning, so B now sees all of A's names
    images = ["/d/s1/a.nii.gz", "/d/s2/a.nii.gz"]
    first = reserve_names(Journal(tmp_path), images, ["argmax:1"])
    Journal(tmp_path).append(Record(images[0], "saliency", "argmax1", "ok", path="a__s1/saliency_argmax1.nii.gz"))
    second = reserve_names(Journal(tmp_path), images, ["argmax:1"])
    assert first == second and first[0] == {images[0]: "a__s1", images[1]: "a__s2"}


def _reserve_into(folder, images, queue):
    queue.put(reserve_names(Journal(folder), images, ["argmax:1", "argmax:2"])[0])


def test_planners_at_the_same_moment_agree_on_every_name(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    cohorts = [[f"/d/s{i}/a.nii.gz" for i in range(1, 4)], ["/d/s1/a.nii.gz"], ["/d/s3/a.nii.gz", "/d/x/b.nii.gz"]] * 2
    processes = [context.Process(target=_reserve_into, args=(tmp_path, images, queue)) for images in cohorts]
    for process in processes:
        process.start()
    chosen = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(60)
    given: dict[str, str] = {}
    for names in chosen:  # one name per image across all six planners, one image per name
        for image, name in names.items():
            assert given.setdefault(image, name) == name
    assert len(set(given.values())) == len(given) == 4


def test_a_torn_line_loses_only_itself(tmp_path):
    journal = Journal(tmp_path)
    journal.append(Record("a", "saliency", "argmax1", "ok", path="a/1"))
    with open(journal.path, "a") as stream:
        stream.write('{"type": "record", "image": "b", "meth')  # a writer killed mid-line
    journal.append(Record("c", "saliency", "argmax1", "ok", path="c/1"))
    assert [r.image for r in Journal(tmp_path).records()] == ["a", "c"]


def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    mine = temporary_path(tmp_path / "map.nii.gz")
    mine.write_bytes(b"in progress")
    dead = tmp_path / mine.name.replace(f".{os.getpid()}@", ".999999999@")
    dead.write_bytes(b"left by a kill")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists() and not dead.exists()
