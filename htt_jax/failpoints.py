"""Named points where a fault campaign can kill the training process (docs/faults.md).

`hit(name, step)` SIGKILLs this process when the environment variable `HTT_FAILPOINT` names that
point and step, as `name@step` (several separated by commas, e.g. `async_save@4,metrics_write@7`).
A kill from outside at a random time rarely lands in the few milliseconds that matter (a save in
flight, half a file written); these points land there every time, so a test can aim at them.

Inert by default: the variable is read once, at import, and with it unset `hit` is one test of an
empty frozenset. SIGKILL rather than an exception, because that is the fault to survive: no
`finally`, no atexit, no flush, as when the OOM killer or a lost node ends a run.

The points (where the code calls `hit`):
  mid_step       htt_jax/train.py, right after a train step is dispatched (its result not ready);
  async_save     htt_jax/train.py, right after an intermediate checkpoint's async save started;
  final_save     htt_jax/train.py, right after the last step's save started (before it commits);
  metrics_write  htt_jax/metrics_log.py, half of train_metrics.jsonl's new content written to its
                 temporary file.
"""

import os
import signal

ENV = "HTT_FAILPOINT"
POINTS = ("mid_step", "async_save", "final_save", "metrics_write")


def parse(text: str) -> frozenset:
  """{(name, step)} from `name@step[,name@step...]`; ValueError naming what is wrong."""
  armed = set()
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, _, step = item.partition("@")
    if name not in POINTS or not step.isdigit():
      raise ValueError(f"{ENV}={text!r}: {item!r} is not NAME@STEP with NAME one of "
                       f"{', '.join(POINTS)}")
    armed.add((name, int(step)))
  return frozenset(armed)


_ARMED = parse(os.environ.get(ENV, ""))


def hit(name: str, step: int) -> None:
  """Kills this process (SIGKILL, no cleanup) when `name@step` is armed; otherwise nothing."""
  if _ARMED and (name, step) in _ARMED:
    os.kill(os.getpid(), signal.SIGKILL)
