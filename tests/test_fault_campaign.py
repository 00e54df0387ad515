"""The fault campaign's CI version (htt_jax/fault_campaign.py, docs/faults.md): scripts/train.py
SIGKILLed at the two moments a kill is likeliest to damage something, each then rerun unchanged
to the end, against one uninterrupted run: every variable within 1e-6 and train_metrics.jsonl
whole JSON lines of steps 1..6, each once, with the reference's values.

- async_save: the process kills itself right after a checkpoint's async save started: the step's
  `<step>.orbax-checkpoint-tmp` folder is left half written, and the rerun resumes from the
  checkpoint before it (the torn one is removed, not restored);
- metrics_write: killed with half of train_metrics.jsonl's new content in its temporary file: the
  file itself is the previous complete one (and a checkpoint whose async save was still in flight
  is left as in async_save).
The failpoints' parsing is checked here too (a misspelt point is an error, not a silent no-op).
"""

import signal
import subprocess
import sys

import pytest

from htt_jax import failpoints, fault_campaign

STEPS, EVERY = 6, 2


def test_a_kill_in_flight_and_mid_write_resume_to_the_uninterrupted_run(tmp_path):
  data_dir = fault_campaign.prepare_data(str(tmp_path / "data"))
  trials = fault_campaign.run_campaign(str(tmp_path), trials=2, seed=0, steps=STEPS, every=EVERY,
                                       moments=("async_save", "metrics_write"),
                                       data_dir=data_dir, log=lambda _: None)
  table = fault_campaign.table(trials)
  assert [t.passed for t in trials] == [True, True], table
  save, write = trials
  assert save.killed and write.killed, table  # each run died by SIGKILL, at its point
  # The kill landed while the save was in flight, and the rerun did not use that step.
  assert save.left == f"checkpoints/{save.step}.orbax-checkpoint-tmp", table
  assert save.resumed_from == save.step - EVERY, table
  # The kill landed in the middle of the write: the half-written temporary is left. So may be
  # the previous checkpoint, when its async save was still in flight (a busy machine: seen once,
  # the step-2 save unfinished at step 4's write); the rerun then resumes from the one before.
  left = write.left.split(", ")
  assert [n for n in left if n.startswith(".train_metrics.jsonl.") and n.endswith(".tmp")], table
  in_flight = {int(n[len("checkpoints/"):].split(".")[0]) for n in left
               if n.startswith("checkpoints/")}
  assert all(n.startswith(("checkpoints/", ".train_metrics.jsonl.")) for n in left), table
  assert write.resumed_from == max(
      [s for s in range(EVERY, write.step, EVERY) if s not in in_flight], default=0), table
  assert all(t.max_diff <= fault_campaign.TOLERANCE and t.metrics_ok for t in trials), table


def test_failpoints_parse_and_reject_unknown_points(monkeypatch):
  assert failpoints.parse(" async_save@4, metrics_write@7 ,") == {("async_save", 4),
                                                                    ("metrics_write", 7)}
  for bad in ("async_save", "async@4", "mid_step@x"):
    with pytest.raises(ValueError, match=failpoints.ENV):
      failpoints.parse(bad)
  monkeypatch.setattr(failpoints, "_ARMED", frozenset())
  failpoints.hit("mid_step", 1)  # unarmed: returns
  # Armed, in a process of its own: it dies by SIGKILL at exactly that point and step.
  code = ("from htt_jax import failpoints\n"
          "failpoints.hit('mid_step', 2)\nprint('passed 2', flush=True)\n"
          "failpoints.hit('mid_step', 3)\nprint('passed 3', flush=True)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={"HTT_FAILPOINT": "mid_step@3", "PATH": "/usr/bin:/bin"}, check=False)
  assert proc.returncode == -signal.SIGKILL and proc.stdout == "passed 2\n", proc
