"""Runs through scripts/train.py that stop and resume: a SIGTERM mid-run (what a scheduler sends
before preempting) leaves a checkpoint from which the same command completes the run, and a pmap
run on 2 CPU devices resumes from its checkpoint; both end with the losses and parameters of a run
that was never interrupted."""

import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, prepare_tiny_synthetic
from htt_jax import checkpointing
from process_utils import env_for, read_metrics, run_processes, tail

STEPS = 4
PAUSE_AFTER = 2  # train_paused.py waits for the SIGTERM before step 3: the run stops at step 3
TIMEOUT = 600  # seconds per group of runs (a deadline; 20-60 s alone, ~3 min beside other tests)
LOSS_KEYS = ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action", "loss/joints3d",
             "learning_rate")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("preemption_data")
  return prepare_tiny_synthetic(out)


def _flags(data_dir, workdir, **overrides):
  # The smoke model on T = t = 8 clips, 2 per step; no periodic checkpoint unless overridden, so
  # the only ones are the SIGTERM's and the final one.
  overrides = {"dataset.data_dir": data_dir, "model.num_frames": 8, "model.window": 8,
               "num_train_steps": STEPS, "log_every_steps": 1, "checkpoint_every_steps": 1000,
               "dataset.num_parallel_calls": 1, "dataset.prefetch": 1,
               "dataset.shuffle_buffer": 8, **overrides}
  return [f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def _train(data_dir, workdir, **overrides):
  return [sys.executable, str(ROOT / "scripts" / "train.py"), *_flags(data_dir, workdir,
                                                                      **overrides)]


def _steps(directory):
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _params(workdir):
  return checkpointing.restore_variables(str(workdir / "checkpoints"))[0]["params"]


def _assert_same_run(workdir, reference):
  log_a, log_b = read_metrics(workdir), read_metrics(reference)
  assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(1, STEPS + 1))
  for a, b in zip(log_a, log_b):
    for key in LOSS_KEYS:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"step {a['step']} {key}")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6),
               _params(workdir), _params(reference))


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """The never-interrupted jit run on one device, started in the background when first asked
  for (its start-up and compilation are mostly one thread, so on 2 cores it costs little beside a
  test's own runs); calling the fixture's value waits for it and gives its workdir."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  log = workdir.parent / "straight.log"
  with open(log, "w") as f:
    proc = subprocess.Popen(_train(data_dir, workdir), stdout=f, stderr=subprocess.STDOUT,
                            env=env_for(), cwd=ROOT, start_new_session=True)

  def finished():
    assert proc.wait(timeout=TIMEOUT) == 0, tail(log)
    return workdir

  yield finished
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_sigterm_leaves_a_checkpoint_the_run_completes_from(data_dir, straight, tmp_path):
  env = env_for()
  interrupted = tmp_path / "interrupted"
  log = tmp_path / "interrupted.log"
  signalled = []

  def sigterm_when_paused(procs):
    # A definite event: the process has finished step 2 and waits for the signal before step 3.
    if not signalled and f"PAUSED before step {PAUSE_AFTER + 1}" in tail(log, 10**6):
      procs[0].send_signal(signal.SIGTERM)
      signalled.append(True)

  paused = [sys.executable, str(ROOT / "tests" / "train_paused.py"), str(PAUSE_AFTER),
            *_flags(data_dir, interrupted)]
  rc = run_processes([paused], [log], env, TIMEOUT, while_running=sigterm_when_paused)
  assert signalled, tail(log)
  assert rc == [0], tail(log)
  # The loop finishes the step it was in, saves it and stops: step 3 exactly.
  stopped = PAUSE_AFTER + 1
  assert f"stopping at step {stopped} on SIGTERM" in tail(log, 10**6)
  assert _steps(interrupted / "checkpoints") == [stopped]
  _, metadata = checkpointing.restore_variables(str(interrupted / "checkpoints"))
  assert metadata["step"] == stopped
  assert [r["step"] for r in read_metrics(interrupted)] == list(range(1, stopped + 1))

  # The same command resumes from that checkpoint and completes the run.
  log = tmp_path / "resumed.log"
  assert run_processes([_train(data_dir, interrupted)], [log], env, TIMEOUT) == [0], tail(log)
  assert _steps(interrupted / "checkpoints")[-1] == STEPS
  _assert_same_run(interrupted, straight())


def test_pmap_run_resumes_from_its_checkpoint(data_dir, straight, tmp_path):
  """parallelism='pmap' through scripts/train.py on 2 CPU devices: 2 steps, then the same command
  with 4 resumes from the step-2 checkpoint and ends where a straight 4-step pmap run ends; that
  run agrees with jit on one device within test_parallel.py's bounds."""
  env = env_for(devices=2)
  resumed, straight_pmap = tmp_path / "resumed", tmp_path / "straight_pmap"
  pmap = {"parallelism": "pmap", "checkpoint_every_steps": 2}
  log = tmp_path / "first.log"
  rc = run_processes([_train(data_dir, resumed, num_train_steps=2, **pmap)], [log], env, TIMEOUT)
  assert rc == [0], tail(log)
  assert _steps(resumed / "checkpoints") == [2]
  assert read_metrics(resumed)[-1]["num_devices"] == 2
  # The resumed run and the straight one together: both find the first run's compiled programs in
  # the session's XLA cache.
  logs = [tmp_path / "resumed.log", tmp_path / "straight_pmap.log"]
  rc = run_processes([_train(data_dir, resumed, **pmap), _train(data_dir, straight_pmap, **pmap)],
                     logs, env, TIMEOUT)
  assert rc == [0, 0], "\n".join(tail(log) for log in logs)
  assert _steps(resumed / "checkpoints") == [2, STEPS]
  assert _steps(straight_pmap / "checkpoints") == [2, STEPS]
  _assert_same_run(resumed, straight_pmap)
  # Steps 3 and 4 did move the parameters, so the equality above is not that of two restores.
  at_2 = checkpointing.restore_variables(str(straight_pmap / "checkpoints"), step=2)[0]["params"]
  assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(
      jax.tree.leaves(at_2), jax.tree.leaves(_params(straight_pmap)))) > 1e-5

  # pmap on 2 devices against jit on 1: the gradient is summed in another order, so Adam may move
  # an element whose gradient is mostly cancellation noise differently, by at most ~2 lr per step
  # (test_parallel.py: the same bounds).
  for a, b in zip(read_metrics(straight_pmap), read_metrics(straight())):
    for key in LOSS_KEYS:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"{a['step']} {key}")
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(np.asarray(x) - np.asarray(y)),
                                       _params(straight_pmap), _params(straight())))
  max_diff = max(float(d.max()) for d in diffs)
  frac = sum(int((d > 1e-5).sum()) for d in diffs) / sum(d.size for d in diffs)
  assert max_diff < 2 * STEPS * 1e-4 and frac < 1e-3, (max_diff, frac)
