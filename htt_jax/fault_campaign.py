"""Kill-and-resume trials of scripts/train.py: what scripts/fault_campaign.py runs (docs/faults.md).

One uninterrupted reference run, then per trial: the same command killed (SIGKILL, no cleanup) at
one moment, rerun unchanged to the end, and compared with the reference: every variable of the
final checkpoint (max |difference|, at most `TOLERANCE`) and train_metrics.jsonl (each line JSON,
steps 1..N once each, in order, every value equal to the reference's but the throughput).

Moments: the named points of htt_jax/failpoints.py (the process kills itself exactly there:
`mid_step`, `async_save`, `final_save`, `metrics_write`), and `timer`, a kill from outside at a
random time between the first logged step and 0.9 x the reference's time from there to its end
(a run that ends first is run again with half the delay, up to 3 times; a trial whose run was
never killed fails: it tested nothing). Each trial records what
the kill left on disk (a checkpoint step in flight, a hidden temporary metrics file), which shows
that the kill landed where it was aimed.

Training runs in subprocesses, as users run it; they share one persistent XLA cache in the
campaign's folder, so only the reference run compiles. The data are 4 synthetic videos (T = t =
8, 72x128 px), the model configs/smoke.py's.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

from htt_jax import failpoints, metrics_log

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6
TIMER = "timer"
MOMENTS = failpoints.POINTS + (TIMER,)
RUN_TIMEOUT_S = 600
# Keys of train_metrics.jsonl that depend on the machine's speed, not on the run.
TIMING_KEYS = ("frames_per_second_per_device",)


@dataclasses.dataclass
class Trial:
  moment: str
  step: Optional[int] = None  # The armed step (failpoints) or the last step logged (timer).
  delay_s: Optional[float] = None  # timer: seconds after the first logged step
  killed: bool = False
  left: str = ""  # What the kill left in the workdir that a finished run would not have.
  resumed_from: Optional[int] = None
  max_diff: Optional[float] = None
  metrics_ok: bool = False
  problem: str = ""

  @property
  def passed(self) -> bool:
    return (self.killed and not self.problem and self.metrics_ok and self.max_diff is not None
            and self.max_diff <= TOLERANCE)


def prepare_data(out: str) -> str:
  """The campaign's dataset (4 synthetic videos, seed 3, T = t = 8) in `out`; returns `out`."""
  from data_pipeline import synthetic, writer  # pylint: disable=g-import-not-at-top
  source = synthetic.SyntheticConfig(seed=3, num_videos=4, image_size=(72, 128))
  writer.prepare_split(synthetic.iter_videos(source, "train"), out, "train", num_frames=8,
                       window=8, spacing=2, vocabulary=synthetic.load_vocabulary(source),
                       dataset_name="synthetic", image_size=(72, 128), progress=False)
  return out


def train_command(data_dir: str, workdir: str, steps: int, every: int) -> list:
  overrides = {"dataset.data_dir": data_dir, "model.num_frames": 8, "model.window": 8,
               "num_train_steps": steps, "log_every_steps": 1, "checkpoint_every_steps": every,
               "eval_split": "", "dataset.num_parallel_calls": 1, "dataset.prefetch": 1,
               "dataset.shuffle_buffer": 8}
  return [sys.executable, str(ROOT / "scripts" / "train.py"),
          f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def plan(trials: int, seed: int, steps: int, every: int,
         moments: Sequence[str] = MOMENTS) -> list:
  """`trials` Trials cycling through `moments`, each at a random step (seeded) where that moment
  exists: a save in flight only at a multiple of `every` before the last step."""
  rng = np.random.default_rng(seed)
  saves = [s for s in range(every, steps, every)]
  out = []
  for i in range(trials):
    moment = moments[i % len(moments)]
    trial = Trial(moment)
    if moment == "async_save":
      trial.step = int(rng.choice(saves))
    elif moment == "final_save":
      trial.step = steps
    elif moment in ("mid_step", "metrics_write"):
      trial.step = int(rng.integers(1, steps + 1))
    else:
      trial.delay_s = float(rng.uniform(0, 1))  # A fraction until the reference's time is known.
    out.append(trial)
  return out


def _environment(folder: str, failpoint: str = "") -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(folder, "xla_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.pop(failpoints.ENV, None)
  if failpoint:
    env[failpoints.ENV] = failpoint
  return env


def _run(command, log: str, env: dict, kill_after_first_step_s: Optional[float] = None):
  """(exit code, seconds from the first logged step to the exit or the kill). With
  `kill_after_first_step_s`, SIGKILLs the process group that many seconds after step 1 is
  logged."""
  workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
  metrics = metrics_log.path_in(workdir)
  with open(log, "w") as f:
    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
  deadline, first = time.monotonic() + RUN_TIMEOUT_S, None
  try:
    while proc.poll() is None:
      if time.monotonic() > deadline:
        raise TimeoutError(f"{command} still running after {RUN_TIMEOUT_S} s; log: {log}")
      if first is None and metrics_log.read(metrics):
        first = time.monotonic()
      if (first is not None and kill_after_first_step_s is not None
          and time.monotonic() - first >= kill_after_first_step_s):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        break
      time.sleep(0.02)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  return proc.returncode, (time.monotonic() - first) if first is not None else 0.0


def _leftovers(workdir: str) -> str:
  """What a finished run would not leave: checkpoint steps in flight, hidden temporaries."""
  names = []
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoints):
    names += [f"checkpoints/{n}" for n in sorted(os.listdir(checkpoints)) if "tmp" in n]
  names += sorted(n for n in os.listdir(workdir) if n.startswith(".") and n.endswith(".tmp"))
  return ", ".join(names)


def _variables(workdir: str):
  import jax  # pylint: disable=g-import-not-at-top
  from htt_jax import checkpointing  # pylint: disable=g-import-not-at-top
  variables, metadata = checkpointing.restore_variables(os.path.join(workdir, "checkpoints"))
  flat = {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(variables)}
  return flat, metadata["step"]


def _compare_metrics(workdir: str, reference: list, steps: int) -> str:
  """'' when train_metrics.jsonl is whole JSON lines of steps 1..steps equal to the reference's;
  otherwise what differs."""
  with open(metrics_log.path_in(workdir), "rb") as f:
    lines = f.read().split(b"\n")
  if lines[-1] != b"":
    return "the file does not end with a newline"
  try:
    records = [json.loads(line) for line in lines[:-1]]
  except ValueError as e:
    return f"a line is not JSON ({e})"
  if [r["step"] for r in records] != list(range(1, steps + 1)):
    return f"steps {[r['step'] for r in records]}, expected 1..{steps} once each"
  for got, want in zip(records, reference):
    for key in sorted(set(got) | set(want)):
      if key in TIMING_KEYS:
        continue
      if key not in got or key not in want or not np.isclose(got[key], want[key], rtol=1e-6,
                                                            atol=0):
        return f"step {got['step']} {key}: {got.get(key)} != reference {want.get(key)}"
  return ""


def run_trial(trial: Trial, number: int, folder: str, data_dir: str, reference: dict,
              steps: int, every: int) -> Trial:
  workdir = os.path.join(folder, f"trial_{number:02d}")
  shutil.rmtree(workdir, ignore_errors=True)
  command = train_command(data_dir, workdir, steps, every)
  if trial.moment == TIMER:
    for _ in range(3):  # A run faster than the reference may end first: then again, sooner.
      shutil.rmtree(workdir, ignore_errors=True)
      rc, _ = _run(command, f"{workdir}.killed.log", _environment(folder),
                   kill_after_first_step_s=trial.delay_s)
      if rc != 0:
        break
      trial.delay_s /= 2
    logged = metrics_log.read(metrics_log.path_in(workdir))
    trial.step = logged[-1]["step"] if logged else 0
  else:
    rc, _ = _run(command, f"{workdir}.killed.log",
                 _environment(folder, f"{trial.moment}@{trial.step}"))
  trial.killed = rc == -signal.SIGKILL
  if not trial.killed:
    trial.problem = f"the run to kill ended with exit code {rc} (log {workdir}.killed.log)"
    return trial
  trial.left = _leftovers(workdir)
  rc, _ = _run(command, f"{workdir}.rerun.log", _environment(folder))
  if rc != 0:
    trial.problem = f"the rerun ended with exit code {rc} (log {workdir}.rerun.log)"
    return trial
  with open(f"{workdir}.rerun.log") as f:
    found = re.search(r"resumed from step (\d+)", f.read())
  trial.resumed_from = int(found.group(1)) if found else 0
  variables, final_step = _variables(workdir)
  if final_step != steps or set(variables) != set(reference["variables"]):
    trial.problem = f"final checkpoint step {final_step} or its variables differ"
    return trial
  trial.max_diff = max(float(np.max(np.abs(variables[k] - reference["variables"][k])))
                       for k in variables)
  problem = _compare_metrics(workdir, reference["metrics"], steps)
  trial.metrics_ok = not problem
  trial.problem = problem
  return trial


def reference_run(folder: str, data_dir: str, steps: int, every: int) -> dict:
  workdir = os.path.join(folder, "reference")
  shutil.rmtree(workdir, ignore_errors=True)
  rc, seconds = _run(train_command(data_dir, workdir, steps, every), f"{workdir}.log",
                     _environment(folder))
  if rc != 0:
    raise RuntimeError(f"the reference run failed (exit code {rc}); log: {workdir}.log")
  variables, _ = _variables(workdir)
  return {"variables": variables, "metrics": metrics_log.read(metrics_log.path_in(workdir)),
          "train_seconds": seconds}


def table(trials: Sequence[Trial]) -> str:
  rows = [("trial", "moment", "killed at step", "left by the kill", "resumed from",
           "max abs param diff", "metrics ok", "pass")]
  for i, t in enumerate(trials, start=1):
    at = "-" if t.step is None else str(t.step)
    if t.moment == TIMER:
      at = f"after {at} (+{t.delay_s:.1f} s)" if t.killed else "not killed (run ended)"
    rows.append((str(i), t.moment, at, t.left or "-",
                 "-" if t.resumed_from is None else str(t.resumed_from),
                 "-" if t.max_diff is None else f"{t.max_diff:.1e}",
                 "yes" if t.metrics_ok else "no", "PASS" if t.passed else "FAIL"))
  lines = ["| " + " | ".join(r) + " |" for r in rows]
  lines.insert(1, "|" + "---|" * len(rows[0]))
  problems = [f"trial {i}: {t.problem}" for i, t in enumerate(trials, start=1) if t.problem]
  return "\n".join(lines + problems)


def run_campaign(folder: str, trials: int, seed: int = 0, steps: int = 10, every: int = 2,
                 moments: Sequence[str] = MOMENTS, data_dir: Optional[str] = None,
                 log=print) -> list:
  """Runs the reference and `trials` trials in `folder`; returns the Trials (see `table`)."""
  from htt_jax import config_lib, storage  # pylint: disable=g-import-not-at-top
  for name, path in (("--workdir", folder), ("data_dir", data_dir)):
    # Each trial's files are inspected, compared and deleted on local disk (shutil, os).
    if path and storage.is_url(path):
      raise config_lib.ConfigError(f"fault campaign: {name}={path} must be a local folder (the "
                                   "campaign kills and inspects runs on this machine)")
  unknown = [m for m in moments if m not in MOMENTS]
  # numpy's default_rng (plan) refuses a negative seed, after the data would have been rendered.
  bad_seed = not isinstance(seed, int) or isinstance(seed, bool) or seed < 0
  if unknown or trials < 1 or bad_seed or every < 1 or steps <= every:
    raise config_lib.ConfigError(
        f"fault campaign: moments {list(moments)} (each one of {', '.join(MOMENTS)}), trials "
        f"{trials} (>= 1), seed {seed!r} (an integer >= 0), steps {steps} and a checkpoint every "
        f"{every} (steps > every >= 1)")
  os.makedirs(folder, exist_ok=True)
  if data_dir is None:
    data_dir = os.path.join(folder, "data")
    if not os.path.exists(os.path.join(data_dir, "train.manifest.json")):
      prepare_data(data_dir)
  planned = plan(trials, seed, steps, every, moments)
  log(f"reference run: {steps} steps, a checkpoint every {every} ({folder}/reference)")
  reference = reference_run(folder, data_dir, steps, every)
  for number, trial in enumerate(planned, start=1):
    if trial.moment == TIMER:  # A random time within the reference's training.
      trial.delay_s *= 0.9 * reference["train_seconds"]
    run_trial(trial, number, folder, data_dir, reference, steps, every)
    log(f"trial {number}/{trials}: {trial.moment} -> {'PASS' if trial.passed else 'FAIL'}")
  return planned
