"""scripts/train.py, paused at a definite step boundary until a SIGTERM arrives (tests only).

`python tests/train_paused.py K <scripts/train.py flags>` runs scripts/train.py unchanged, except
that before step K + 1 takes its batch (steps 1..K done, logged and, where due, saved) the process
prints `PAUSED before step K+1` and waits for SIGTERM. The signal still reaches the training loop's
own handler, so the loop then runs step K + 1 and stops there: the stop step is K + 1 exactly,
whatever the machine's speed, where a test that signals after watching the metrics file races
the loop (it may have run more steps, or finished, before the signal lands).
"""

import os
import runpy
import signal
import sys
import time

from htt_jax import parallel  # imports JAX without starting a backend: XLA_FLAGS still apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 300  # a deadline, so that a test that never signals cannot leave the process behind


def _wait_for_sigterm(step):
  received = []
  loop_handler = signal.getsignal(signal.SIGTERM)
  if not callable(loop_handler):
    raise RuntimeError(f"no SIGTERM handler in the training loop (found {loop_handler!r})")

  def handler(signum, frame):
    received.append(signum)
    loop_handler(signum, frame)  # the loop's own flag: it saves and stops after this step

  # Installed before the announcement, so a signal sent as soon as the line is read is not lost.
  signal.signal(signal.SIGTERM, handler)
  print(f"PAUSED before step {step}", file=sys.stderr, flush=True)
  deadline = time.monotonic() + WAIT_S
  while not received:
    if time.monotonic() > deadline:
      raise TimeoutError(f"no SIGTERM within {WAIT_S} s of pausing before step {step}")
    time.sleep(0.01)
  signal.signal(signal.SIGTERM, loop_handler)


def main():
  pause_after = int(sys.argv.pop(1))
  make_train_step = parallel.make_train_step

  def paused_make_train_step(*args, **kwargs):
    train_step, to_device = make_train_step(*args, **kwargs)
    calls = []

    def to_device_pausing(batch):
      # The loop calls to_device once per step, first thing: call K + 1 starts step K + 1.
      calls.append(None)
      if len(calls) == pause_after + 1:
        _wait_for_sigterm(pause_after + 1)
      return to_device(batch)

    return train_step, to_device_pausing

  parallel.make_train_step = paused_make_train_step
  sys.argv[0] = os.path.join(ROOT, "scripts", "train.py")
  runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
  main()
