"""XLA:CPU's YNNPACK fusions: on for the runs they speed up, off otherwise.

jax/jaxlib 0.12.0.1 on this project's 2-core x86 CPU, `scripts/benchmark.py --mode=train`
(README, Benchmark), with `--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce` against without:
float32 with stored-statistics BatchNorm (the paper's training) 1521 vs 1698 and 1511 vs 1609 ms
per step at (96, 160, 2, 32, 16), 6364 vs 7194 ms at (270, 480, 1, 32, 16), 769 vs 766 ms at the
demo's 72x96; with batch-statistics BatchNorm (`model.batch_norm='batch'`, the demo's 72x96
model) 898 vs 820 ms, but with the reduction fusions alone 774 vs 823 ms (elementwise alone
1003 ms; for stored statistics at 96x160 the reductions alone gain nothing: 1658 and 1692 ms).
XLA's own emitter sums a (64, 24, 40, 64) gradient over N, H, W (every bias gradient) in 4.4 ms,
YNNPACK in 0.4 ms. And with any YNNPACK fusion on, bfloat16 ResNet-18 on XLA:CPU returns NaNs
(tests/test_model.py's bfloat16 test fails with `eltwise`, `reduce` or both). JAX reads the flag
once, when it starts its CPU backend, so the choice is per process:

- importing `htt_jax` turns the fusions off (safe for every run), `set_import_default`;
- the scripts call `configure(configs)` with every config the process will run, before JAX starts;
  float32 runs get the fusions measured fastest for their BatchNorm (`fusions_for`);
- a `--xla_cpu_experimental_ynn_fusion_type` the user put in XLA_FLAGS is never changed.
"""

import os
from typing import Iterable

from absl import logging

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
OFF = f"{YNN_FLAG}="
FLOAT32_FUSIONS = f"{YNN_FLAG}=eltwise,reduce"  # stored-statistics BatchNorm
BATCH_STATISTICS_FUSIONS = f"{YNN_FLAG}=reduce"  # batch-statistics BatchNorm
# Set beside XLA_FLAGS when the value came from us, so that `configure` (also in child processes,
# which inherit both) may change it, and a user's own setting is left alone.
_OURS = "HTT_JAX_YNN_FLAG_SET_BY_HTT_JAX"


def _replace(flags: str, value: str) -> str:
  kept = [f for f in flags.split() if not f.startswith(YNN_FLAG + "=")]
  return " ".join(kept + [value])


def set_import_default() -> None:
  """Turns the fusions off unless XLA_FLAGS already chooses (called when `htt_jax` is imported)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG not in flags:
    os.environ["XLA_FLAGS"] = _replace(flags, OFF)
    os.environ[_OURS] = "1"


def fusions_for(config) -> str:
  """The flag measured fastest for runs like `config` (docstring above)."""
  if str(config.dtype) != "float32":
    return OFF
  return FLOAT32_FUSIONS if config.model.batch_norm == "frozen" else BATCH_STATISTICS_FUSIONS


def configure(configs: Iterable) -> str:
  """Chooses the fusions for a process that will run `configs`; returns the flag in effect.

  Must run before JAX starts its backends (the scripts call it first thing in `main`).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  current = next((f for f in flags.split() if f.startswith(YNN_FLAG + "=")), OFF)
  if os.environ.get(_OURS) != "1" and YNN_FLAG in flags:
    logging.info("XLA:CPU YNNPACK fusions as set in XLA_FLAGS: %s", current)
    return current
  choices = {fusions_for(c) for c in configs}
  wanted = choices.pop() if len(choices) == 1 else OFF  # one flag per process: off if they differ
  if wanted != current:
    try:
      from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
      started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API: if it moves, assume not started
      started = False
    if started:
      logging.warning("JAX has already started; %s stays as it was (%s)", YNN_FLAG, current)
      return current
    os.environ["XLA_FLAGS"] = _replace(flags, wanted)
    os.environ[_OURS] = "1"
  logging.info("XLA:CPU YNNPACK fusions: %s", wanted)
  return wanted
