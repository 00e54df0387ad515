"""A SIGTERM mid-run (what a scheduler sends before preempting) leaves a checkpoint from which the
run completes, through scripts/train.py: exit code 0, a checkpoint at the step the signal arrived
at, and rerunning the same command continues the logged steps with no gap and ends with the
losses and parameters of a run that was never interrupted."""

import signal
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from data_pipeline import synthetic, writer
from htt_jax import checkpointing
from process_utils import env_for, read_metrics, run_processes, tail

STEPS = 6
TIMEOUT = 600  # seconds per group of runs (a deadline; 20-60 s alone, ~3 min beside other tests)
LOSS_KEYS = ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action", "loss/joints3d",
             "learning_rate")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("preemption_data")
  source = synthetic.SyntheticConfig(seed=3, num_videos=4, image_size=(72, 128))
  writer.prepare_split(synthetic.iter_videos(source, "train"), str(out), "train", num_frames=8,
                       window=8, spacing=2, vocabulary=synthetic.load_vocabulary(source),
                       dataset_name="synthetic", image_size=(72, 128), progress=False)
  return str(out)


def _command(data_dir, workdir):
  # The smoke model on T = t = 8 clips, 2 per step on one device; no periodic checkpoint, so the
  # only ones are the SIGTERM's and the final one.
  overrides = {"dataset.data_dir": data_dir, "model.num_frames": 8, "model.window": 8,
               "num_train_steps": STEPS, "log_every_steps": 1, "checkpoint_every_steps": 1000,
               "dataset.num_parallel_calls": 1, "dataset.prefetch": 1,
               "dataset.shuffle_buffer": 8}
  return [sys.executable, str(ROOT / "scripts" / "train.py"),
          f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def _steps(directory):
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_sigterm_leaves_a_checkpoint_the_run_completes_from(data_dir, tmp_path):
  env = env_for()
  interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
  signalled = []

  def sigterm_after_step_2(procs):
    if not signalled and len(read_metrics(interrupted)) >= 2:
      procs[0].send_signal(signal.SIGTERM)
      signalled.append(True)

  # The never-interrupted run goes alongside (its start-up and compilation are mostly one thread
  # each, so on 2 cores the pair takes little longer than one).
  logs = [tmp_path / "interrupted.log", tmp_path / "straight.log"]
  rc = run_processes([_command(data_dir, interrupted), _command(data_dir, straight)], logs, env,
                     TIMEOUT, while_running=sigterm_after_step_2)
  assert signalled, "the run ended before step 2 was logged"
  assert rc == [0, 0], "\n".join(tail(log) for log in logs)
  stopped = read_metrics(interrupted)[-1]["step"]
  assert 2 <= stopped < STEPS, stopped
  assert f"stopping at step {stopped} on SIGTERM" in tail(logs[0], 10**6)
  assert _steps(interrupted / "checkpoints") == [stopped]

  # The same command resumes from that checkpoint and completes the run.
  log = tmp_path / "resumed.log"
  assert run_processes([_command(data_dir, interrupted)], [log], env, TIMEOUT) == [0], tail(log)
  resumed = read_metrics(interrupted)
  assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
  assert STEPS in _steps(interrupted / "checkpoints")

  # Identical to the run that was never interrupted.
  assert [r["step"] for r in read_metrics(straight)] == list(range(1, STEPS + 1))
  for a, b in zip(resumed, read_metrics(straight)):
    for key in LOSS_KEYS:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"step {a['step']} {key}")
  params_a, _ = checkpointing.restore_variables(str(interrupted / "checkpoints"))
  params_b, _ = checkpointing.restore_variables(str(straight / "checkpoints"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), params_a,
               params_b)
