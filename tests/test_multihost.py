"""Multi-host training without a cluster: two processes on this machine (jax.distributed over
localhost, gloo CPU collectives), 2 CPU devices each, against one process with 4 devices and the
same global batches (tests/multihost_worker.py runs each process).

- host_sharding='batch': each process feeds its rows of the one-process global batch; the same
  losses and parameters as one process (the contract: the global batch does not depend on the
  process count).
- host_sharding='files': each process reads its own shards (disjoint, together all of them) and
  the run is the one-process run fed the concatenation of both processes' batches; a SIGTERM to
  one process stops both after the same step, with one checkpoint.
- A global batch that does not divide over the devices or processes fails at once, naming the
  key; the 2-process case is started through scripts/train.py's --coordinator_address flags.
Every subprocess has a deadline and is killed (by its own process group) on failure.
"""

import json
import os
import signal
import sys

import numpy as np
import pytest

from conftest import ROOT, load_config, prepare_tiny_synthetic
from data_pipeline import schema
from htt_jax import checkpointing
import multihost_worker  # Its OVERRIDES are the config of every run here.
from process_utils import env_for, free_port, read_metrics, run_processes, tail

WORKER = str(ROOT / "tests" / "multihost_worker.py")
LOSS_KEYS = ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action", "loss/joints3d",
             "learning_rate")
STEPS = 2
TIMEOUT = 900  # seconds for one group of processes (a deadline; 1-2 minutes alone, up to 5 beside
# another heavy test file under `make test`'s two workers)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """4 synthetic videos in 4 shards (one video each), so 'files' gives each process two."""
  out = tmp_path_factory.mktemp("multihost_data")
  return prepare_tiny_synthetic(out, num_frames=multihost_worker.NUM_FRAMES,
                                window=multihost_worker.NUM_FRAMES, min_shards=4)


def _assert_same_losses(log, reference, steps):
  for a, b in zip(log[:steps], reference[:steps]):
    assert a["step"] == b["step"]
    for key in LOSS_KEYS:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6,
                                 err_msg=f"step {a['step']} {key}")


def _assert_close_params(directory_a, directory_b, steps):
  """Summing the gradient over processes (gloo) instead of within one process changes the order
  of float additions; Adam normalises each element, so an element whose gradient is mostly that
  noise can move by up to ~lr a step (as in test_parallel.py). Nearly all agree to 1e-5."""
  a, _ = checkpointing.restore_variables(directory_a)
  b, _ = checkpointing.restore_variables(directory_b)
  import jax  # pylint: disable=g-import-not-at-top
  diff = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel()
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])
  lr = load_config("smoke").learning_rate
  assert (diff > 1e-5).mean() < 1e-4, (diff > 1e-5).mean()
  assert diff.max() < 2 * lr * steps, diff.max()


def _worker(mode, data_dir, workdir, result, *extra):
  return [sys.executable, WORKER, f"--mode={mode}", f"--data_dir={data_dir}",
          f"--workdir={workdir}", f"--result={result}", f"--steps={STEPS}", *extra]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """One process, 4 devices: the 'batch' run and the 'files' run of 2 processes, emulated."""
  workdir = tmp_path_factory.mktemp("reference")
  result, log = workdir / "result.json", workdir / "reference.log"
  rc = run_processes([_worker("reference", data_dir, workdir, result, f"--files_steps={STEPS}")],
                     [log], env_for(), TIMEOUT)
  assert rc == [0], tail(log)
  with open(result) as f:
    out = json.load(f)
  for mode in ("batch", "files"):
    out[mode]["workdir"] = str(workdir / mode)
    assert [r["step"] for r in read_metrics(out[mode]["workdir"])] == list(range(1, STEPS + 1))
  return out


MAX_FILES_STEPS = 40


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory):
  """Two processes, 2 devices each: 'batch' for STEPS steps, then 'files' until a SIGTERM to
  process 1 (a scheduler's preemption notice reaching one host only) once step STEPS is logged."""
  workdir = tmp_path_factory.mktemp("two_processes")
  port = free_port()
  commands = [_worker("process", data_dir, workdir, workdir / f"result{i}.json",
                      f"--files_steps={MAX_FILES_STEPS}", "--num_processes=2",
                      f"--process_id={i}", f"--port={port}") for i in range(2)]
  logs = [workdir / f"process{i}.log" for i in range(2)]
  signalled = []

  def sigterm_once_files_logs_step_2(procs):
    if not signalled and len(read_metrics(workdir / "files")) >= STEPS:
      procs[1].send_signal(signal.SIGTERM)
      signalled.append(True)

  rcs = run_processes(commands, logs, env_for(), TIMEOUT,
                      while_running=sigterm_once_files_logs_step_2)
  assert rcs == [0, 0], "\n".join(tail(log) for log in logs)
  assert signalled, "the 'files' run ended before step 2 was logged"
  results = []
  for i in range(2):
    with open(workdir / f"result{i}.json") as f:
      results.append(json.load(f))
  return {"results": results, "workdir": workdir, "logs": logs}


def _assert_run_matches_one_process(reference, two_processes, run, eval_tolerance):
  """Two processes' run `run` ('batch' or 'pmap', host_sharding='batch') against the one-process
  'batch' run: the same clips, losses, parameters (to Adam's rounding) and evaluation report,
  each float of which within `eval_tolerance(key)` (pytest.approx's keywords)."""
  workdir = two_processes["workdir"] / run
  log = read_metrics(workdir)  # Written by process 0 only: one line per step.
  assert [r["step"] for r in log] == list(range(1, STEPS + 1))
  assert log[0]["num_processes"] == 2 and log[0]["num_devices"] == 4
  # Each process fed its rows of the global batch: together, the one-process run's clips.
  p0, p1 = (r[run]["clips"] for r in two_processes["results"])
  assert [a + b for a, b in zip(p0, p1)] == reference["batch"]["clips"]
  _assert_same_losses(log, read_metrics(reference["batch"]["workdir"]), STEPS)
  _assert_close_params(str(workdir / "checkpoints"),
                       os.path.join(reference["batch"]["workdir"], "checkpoints"), STEPS)
  # The evaluation after training: every process gets the one-process report (each evaluates its
  # rows of every batch, then they gather), written once, to workdir/eval/train.
  for result in two_processes["results"]:
    report = result[run]["last"]["eval"]
    for key, value in reference["batch"]["last"]["eval"].items():
      assert report[key] == (pytest.approx(value, **eval_tolerance(key))
                             if isinstance(value, float) else value), key
  assert (workdir / "eval" / "train" / "metrics.json").exists()


def test_batch_sharding_two_processes_match_one(reference, two_processes):
  for p, result in enumerate(two_processes["results"]):
    assert (result["batch"]["process_index"], result["batch"]["process_count"],
            result["batch"]["local_device_count"]) == (p, 2, 2)
  _assert_run_matches_one_process(reference, two_processes, "batch",
                                  lambda key: dict(rel=1e-4, abs=1e-6))


def test_pmap_two_processes_match_one(reference, two_processes):
  """config.parallelism='pmap' across two processes: the one-process jit run's losses, a
  checkpoint that saves (pmap's state is host-local; before, Orbax refused it in a multi-process
  run), its parameters, the evaluation after training, and a Predictor on process 0 alone."""
  # The parameters differ by float rounding, so a joint may cross one PCK threshold: an AUC moves
  # by a step of ~1.5e-5 then (seen: auc_ra, one step; MEPE by 1e-4 mm).
  _assert_run_matches_one_process(
      reference, two_processes, "pmap",
      lambda key: dict(rel=0, abs=1e-4) if key.startswith("auc") else dict(rel=1e-4, abs=1e-3))
  # Process 0 predicted 3 clips with pmap and with jit on its own devices: the same outputs.
  assert two_processes["results"][0]["pmap"]["predictor_max_diff"] < 1e-5
  assert "predictor_max_diff" not in two_processes["results"][1]["pmap"]


def _video_shards(data_dir):
  """video index -> shard number (the writer puts consecutive videos in a shard)."""
  manifest = schema.load_manifest(data_dir, "train")
  owner = []
  for number, shard in enumerate(manifest["shards"]):
    owner += [number] * shard["videos"]
  return owner, len(manifest["shards"])


def test_files_sharding_and_sigterm_to_one_process(data_dir, reference, two_processes):
  workdir = two_processes["workdir"] / "files"
  results = [r["files"] for r in two_processes["results"]]

  # Process 1 got the SIGTERM; both stopped after the same step, saved it, logged the same loss.
  stopped = len(results[0]["clips"])
  assert len(results[1]["clips"]) == stopped and STEPS <= stopped < MAX_FILES_STEPS
  for key in LOSS_KEYS:
    assert results[0]["last"][key] == results[1]["last"][key], key
  assert not any("eval" in r["last"] for r in results)  # stopped early: not evaluated
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, stopped + 1))
  variables, metadata = checkpointing.restore_variables(str(workdir / "checkpoints"))
  assert metadata["step"] == stopped and variables["params"]
  assert f"stopping at step {stopped} on preemption" in tail(two_processes["logs"][0], 10**6)

  # Each process read only its own shards (p, p + 2, ...): disjoint, together all of them.
  owner, num_shards = _video_shards(data_dir)
  for p in range(2):
    shards = {owner[v] for step in results[p]["clips"] for v, _ in step}
    assert shards <= set(range(p, num_shards, 2)), (p, shards)
  # The global batch is process 0's clips then process 1's, as in the emulated reference...
  for step in range(STEPS):
    assert results[0]["clips"][step] + results[1]["clips"][step] == \
        reference["files"]["clips"][step]
  # ...and so are the losses.
  _assert_same_losses(read_metrics(workdir), read_metrics(reference["files"]["workdir"]), STEPS)


def _script_flags(data_dir, overrides):
  flags = [f"--config.{k}={v}" for k, v in {**multihost_worker.OVERRIDES, **overrides}.items()]
  return [f"--config={ROOT / 'configs' / 'smoke.py'}", f"--config.dataset.data_dir={data_dir}",
          *flags]


def test_uneven_global_batch_fails_clearly(data_dir, tmp_path):
  # Over processes (the reader's split), checked without starting any.
  from htt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = multihost_worker.smoke_config(data_dir, 2, "batch")
  config.batch_size = 6
  with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by the number of processes "
                                       r"\(4\)"):
    input_pipeline.create_dataset(config, "train", True, process_index=0, process_count=4)

  # Over devices, in 2 processes started by scripts/train.py's --coordinator_address,
  # --num_processes and --process_id: both join, then stop before compiling; none hangs.
  port = free_port()
  flags = _script_flags(data_dir, {"num_train_steps": 1, "batch_size": 6})
  commands = [[sys.executable, str(ROOT / "scripts" / "train.py"), f"--workdir={tmp_path / 'w'}",
               *flags, f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}"] for i in range(2)]
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  rcs = run_processes(commands, logs, env_for(devices=2), timeout=120,
                      stop_on_failure=False)
  assert all(rc not in (0, None) for rc in rcs), rcs
  for i, log in enumerate(logs):
    text = tail(log, 10**6)
    assert f"process {i} of 2, 2 local / 4 global devices" in text, text[-3000:]
    assert "config.batch_size=6 must be divisible by the number of devices (4)" in text, \
        text[-3000:]
