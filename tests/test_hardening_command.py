"""Issue 13 at the command: empty targets, Ctrl-C, up-front checks, messages, file modes, warnings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esegeta_monai.apps.cli import main
from esegeta_monai.apps.config import load_run_config
from esegeta_monai.errors import BundleError, ConfigError
from esegeta_monai.monai.bundle import load_bundle

sys.path.insert(0, str(Path(__file__).parent))
from tiny_bundle import make_tiny_bundle, write_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LESION = REPO / "bundles" / "lesion_cls_2d_demo"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="module")
def never_class_one(tmp_path_factory):
    """The tiny bundle with an output layer that always prefers class 0: argmax:1 is empty everywhere."""
    root = make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "never")
    state = torch.load(root / "models" / "model.pt")
    last = [k for k, v in state.items() if k.endswith("bias") and v.shape == (2,)][-1]
    state[last] = torch.tensor([1e4, -1e4])
    torch.save(state, root / "models" / "model.pt")
    return root


def explain(bundle, out, *args):
    return main(["-q", "explain", "--bundle", str(bundle), "--out", str(out), "--no-progress", *map(str, args)])


def view(out):
    return json.loads((out / "manifest.json").read_text())


def test_an_empty_target_is_recorded_empty_not_an_all_zero_map(never_class_one, tmp_path, capsys):
    out = tmp_path / "out"
    assert explain(never_class_one, out, "--methods", "saliency,input_x_gradient") == 1
    records = view(out)["records"]
    assert [r["status"] for r in records] == ["empty", "empty"] and not list(out.rglob("*_argmax1.nii.gz"))
    assert not list(out.rglob("*.png"))  # no map, so no figure of one (the prediction is written: all background)
    assert "argmax1" in records[0]["error"] and "0 voxel" in records[0]["error"]
    assert view(out)["summary"] == {"empty": 2}
    assert "empty target" in capsys.readouterr().err
    assert explain(never_class_one, tmp_path / "allowed", "--methods", "saliency", "--allow-empty") == 0


def test_ctrl_c_prints_one_line_and_exits_130(tiny, tmp_path):
    images = [write_image(tmp_path / f"scan{i}.nii.gz", seed=i) for i in range(16)]
    out = tmp_path / "out"
    # enough images that the run is still going when the signal comes, sent at its first record
    (tmp_path / "run.yaml").write_text("methods: [{integrated_gradients: {n_steps: 64}}]\n")
    command = [sys.executable, "-m", "esegeta_monai", "-q", "explain", "--bundle", str(tiny), "--out", str(out), "--no-progress",
               "--config", str(tmp_path / "run.yaml"), "--image", *map(str, images)]
    # an earlier test may leave SIGINT ignored in this process, which a child inherits: restore the default
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    journal = out / "journal.jsonl"
    while time.monotonic() < deadline and not (journal.exists() and '"type":"record"' in journal.read_text()):
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted: give it more work"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "run the same command again" in stderr
    assert (out / "manifest.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--roi-size", "0,0,0"], None),  # argparse refuses it
    (["--roi-size", "16,16"], "has 2 axes"),
    (["--target", "argmax:"], "no class given"),
    (["--target", "argmax:-1"], "negative"),
    (["--target", "argmax:5"], "class 5 does not exist"),
    (["--format", "png"], "writes 2D maps"),
    (["--methods", ""], "non-empty"),
])
def test_what_the_config_and_bundle_tell_fails_before_anything_runs(tiny, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if message is None else _no_raise():
        assert explain(tiny, out, *args) == 2
    if message:
        assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_spatial_targets_on_a_classifier_are_refused_up_front(tmp_path, capsys):
    assert explain(LESION, tmp_path / "out", "--target", "otsu:1") == 2
    assert "classifier" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_accepted_but_wrong_inputs(tiny, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("timeout: true\n")
    with pytest.raises(ConfigError, match="timeout"):
        load_run_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_run_config(tmp_path)
    assert main(["-q", "evaluate", "--bundle", str(tiny), "--metrics", ",", "--out", str(tmp_path / "e")]) == 2
    assert "names no metric" in capsys.readouterr().err
    out = tmp_path / "out"
    assert explain(tiny, out, "--methods", "saliency", "--target", "argmax:1,1") == 0
    assert len(view(out)["records"]) == 1  # one map, not the same one twice


def test_every_output_file_gets_the_same_umask_mode(tiny, tmp_path):
    out = tmp_path / "out"
    previous = os.umask(0o027)
    try:
        assert explain(tiny, out, "--methods", "saliency") == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert set(modes) >= {"manifest.json", "journal.jsonl", "saliency_argmax1.nii.gz"}
    assert set(modes.values()) == {0o640}, modes


def test_third_party_deprecation_notices_stay_off_the_console(tiny, tmp_path):
    command = [sys.executable, "-m", "esegeta_monai", "explain", "--bundle", str(tiny), "--out", str(tmp_path / "out"),
               "--no-progress", "--methods", "saliency"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FutureWarning" not in done.stderr and "DeprecationWarning" not in done.stderr
    assert "saliency argmax1: ok" in done.stderr  # our own messages are still there


def test_bundle_messages_name_the_real_cause(tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "configs").mkdir()
    config = json.loads((tiny / "configs" / "inference.json").read_text())
    del config["network_def"]
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError) as error:
        load_bundle(broken)
    assert "network_def" in str(error.value) and "correct `device`" not in str(error.value)
    with pytest.raises(BundleError) as error:
        load_bundle(tmp_path)  # a folder without configs/
    assert "--bundle" in str(error.value) and "--config" not in str(error.value)
