"""Fine-tuning a finished run (`--init-from RUN_DIR`, TrainConfig.init_variant): each seed starts from the
same seed's trained weights, and every way of pointing at the wrong weights is a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PLAIN_INPUT, cache_env, small_run

ROOT = Path(__file__).resolve().parents[1]
SIZE = ("24", "32")


def tune(out: Path, env, *extra: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The adam variant fine-tuning the adam variant of another run, at learning rate 0 for one epoch."""
    cmd = [sys.executable, "-m", "experiments.optimizers", "--variants", "adam", "--epochs", "1", "--seeds", "2",
           "--image-size", *SIZE, "--out", str(out), "--no-progress", "--no-figures", *extra, *PLAIN_INPUT,
           "init_variant=adam", "learning_rate=0", *sets]  # PLAIN_INPUT ends in --set: the source run's input
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("fine_tune")
    env = cache_env(root)
    return small_run(root / "source", env, tuple(map(int, SIZE)), epochs=2), env, root


def test_each_seed_starts_from_its_trained_weights(source):
    run, env, root = source
    r = tune(root / "tuned", env, "--init-from", str(run))
    assert r.returncode == 0, r.stderr
    (tuned,) = (root / "tuned" / "optimizers").iterdir()
    want = json.loads((run / "metrics.json").read_text())["adam"]["history"]
    got = json.loads((tuned / "metrics.json").read_text())["adam"]["history"]
    # learning rate 0: the weights stay the source's, so TEST matches its last epoch seed by seed
    np.testing.assert_allclose(got["test_loss"][-1], want["test_loss"][-1], rtol=1e-6)
    np.testing.assert_allclose(got["test_acc"][-1], want["test_acc"][-1], atol=1e-9)
    # seed 1 starting from seed 0's weights would show: the source's two seeds differ
    assert want["test_loss"][-1][0] != want["test_loss"][-1][1]
    cfg = json.loads((tuned / "config.json").read_text())["variants"]["adam"]["train"]
    assert cfg["init_variant"] == "adam" and cfg["init_from"] == str(run)


@pytest.mark.parametrize("extra,sets,words", [
    ((), (), ["fine-tunes the weights of variant 'adam'", "--init-from RUN_DIR"]),
    (("--init-from", "{root}/nowhere"), (), ["--init-from", "nowhere", "does not exist"]),
    (("--init-from", "{run}", "--seed-offset", "1"), (), ["has seeds [0, 1], not [2]"]),
    (("--init-from", "{run}"), ("dense_features=64",), ["another model", "dense_features"]),
    (("--init-from", "{run}"), ("init_variant=sgd",), ["--init-from", "unknown variant 'sgd'", "has adam"]),
])
def test_wrong_start_weights_are_one_line_errors(source, extra, sets, words):
    run, env, root = source
    r = tune(root / "errors", env, *[e.format(run=run, root=root) for e in extra], sets=sets)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    for w in words:
        assert w in line, line
    assert not (root / "errors").exists()  # refused before a run folder is made


@pytest.mark.parametrize("stop_at,words", [(None, "has trained 2 of 5 epochs; finish it first"), (0.01, None)])
def test_a_source_stopped_at_its_training_accuracy_is_finished(source, tmp_path, stop_at, words):
    """A source variant planned for 5 epochs that ended after 2: refused when it was cut short, taken when it
    stopped because its training accuracy reached `stop_at_train_acc` (as the VGG16 frozen variants do)."""
    run, env, _ = source
    cut = tmp_path / "source"
    shutil.copytree(run, cut)
    cfg = json.loads((cut / "config.json").read_text())
    cfg["variants"]["adam"]["train"].update(epochs=5, stop_at_train_acc=stop_at)
    (cut / "config.json").write_text(json.dumps(cfg))
    r = tune(tmp_path / "tuned", env, "--init-from", str(cut))
    if words is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and words in r.stderr.strip(), r.stderr
