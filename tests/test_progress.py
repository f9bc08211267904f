"""Progress for people: a bar in a terminal, plain lines in a log file."""

import subprocess
import sys
from types import SimpleNamespace

from mdgen.progress import progress, say
from mdgen.training.progress import LogLines, training_progress


def test_progress_in_a_log_writes_whole_lines(capsys):
    for _ in progress(range(5), desc="encoding", unit="batch"):
        pass
    out = capsys.readouterr().out
    assert "\r" not in out and out.endswith("\n")
    lines = out.splitlines()
    assert lines[0].startswith("encoding:   0%") and lines[-1].startswith("encoding: 100%")
    assert "5/5" in lines[-1]


def trainer(**changes):
    state = dict(
        max_steps=100,
        max_epochs=-1,
        num_training_batches=10,
        global_step=25,
        current_epoch=2,
        fit_loop=SimpleNamespace(total_batch_idx=25),
        progress_bar_metrics={"train/loss": 0.12345, "v_num": 0},
        is_global_zero=True,
    )
    return SimpleNamespace(**(state | changes))


def test_log_lines_say_how_far_training_is_and_how_long_is_left():
    callback = LogLines()
    callback._start, callback._pace_from = 0.0, (0.0, 0.0)
    line = callback.line(trainer(), now=120.0)
    # 25 of 100 steps in 2 minutes: 6 minutes left.
    assert line == "step 25 (epoch 2): 25% done, 2.0 min, about 6.0 min left; train/loss=0.1235"


def test_the_time_left_is_paced_after_the_first_batch(monkeypatch, capsys):
    """A compiled run spends half a minute on its first step: that must not promise hours."""
    clock = iter([0.0, 30.0, 90.0])
    monkeypatch.setattr("mdgen.training.progress.time.perf_counter", lambda: next(clock))
    callback = LogLines(interval_s=30)
    callback.on_train_start(trainer(global_step=0), None)
    callback.on_train_batch_end(trainer(global_step=1), None, None, None, 0)  # at 30 s: compiled
    callback.on_train_batch_end(trainer(global_step=25), None, None, None, 24)  # at 90 s
    first, second = capsys.readouterr().out.splitlines()
    assert first == "step 1 (epoch 2): 1% done, 0.5 min; train/loss=0.1235"  # no pace yet
    # 24 steps in the minute after the first: 75 more take 3.1 minutes
    assert second == "step 25 (epoch 2): 25% done, 1.5 min, about 3.1 min left; train/loss=0.1235"


def test_the_first_limit_to_be_reached_decides_the_fraction():
    # The VA-VAE counts two optimizer steps per batch: 40 of 100 steps, but 20 of 20 batches.
    done = trainer(max_steps=100, global_step=40, max_epochs=2, fit_loop=SimpleNamespace(total_batch_idx=20))
    assert LogLines.fraction_done(done) == 1.0
    assert (
        LogLines.fraction_done(trainer(max_steps=-1, max_epochs=4, fit_loop=SimpleNamespace(total_batch_idx=10)))
        == 0.25
    )


def test_training_in_a_log_reports_lines_not_a_bar():
    settings = training_progress()  # pytest captures stdout: not a terminal
    assert settings["enable_progress_bar"] is False
    assert [type(c) for c in settings["callbacks"]] == [LogLines]


def test_say_speaks_on_rank_zero_only_without_lightning(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "lightning_fabric.utilities.rank_zero", raising=False)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    say("from rank 1")
    monkeypatch.setenv("LOCAL_RANK", "0")  # read before SLURM_PROCID, as Lightning does
    say("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"


def test_stages_that_do_not_train_start_without_torch():
    command = "import sys, mdgen.stages.validate_dataset, mdgen.stages.simulate_dataset; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
