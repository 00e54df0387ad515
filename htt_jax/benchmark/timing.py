"""Step timing shared by the JAX measurements and the PyTorch baseline (imports neither).

Every timed step ends with the caller's synchronisation (`jax.block_until_ready`,
`torch.cuda.synchronize`), so a step's time is the work it did, not the time to enqueue it.
"""

import time
from typing import Callable, Dict, List

import numpy as np

from htt_jax import config_lib


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> List[float]:
  """Runs `step` warmup times untimed, then `steps` times; returns each timed step's seconds.

  `step` must block until its work is done.
  """
  if steps < 1:
    raise config_lib.ConfigError(f"config.timed_steps={steps} must be at least 1")
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def median_ms(step: Callable[[], None], warmup: int, steps: int) -> float:
  """The median of `time_steps`, in milliseconds: one figure for a call timed alone."""
  return 1e3 * float(np.median(time_steps(step, warmup, steps)))


def summarize(times: List[float], frames_per_step: int, clips_per_step: int,
              num_devices: int) -> Dict[str, float]:
  """Median/p90/mean step time (ms) and throughputs from the median step time.

  The median, not the mean, sets the throughput: a shared machine's occasional stall (another
  process, a page fault, the garbage collector) should not decide the result; p90 shows the spread.
  """
  seconds = np.asarray(times, np.float64)
  median = float(np.median(seconds))
  return {
      "timed_steps": len(times),
      "step_time_ms_median": 1e3 * median,
      "step_time_ms_p90": 1e3 * float(np.percentile(seconds, 90)),
      "step_time_ms_mean": 1e3 * float(seconds.mean()),
      "step_time_ms_min": 1e3 * float(seconds.min()),
      "frames_per_second": frames_per_step / median,
      "frames_per_second_per_device": frames_per_step / median / num_devices,
      "clips_per_second": clips_per_step / median,
      "clips_per_second_per_device": clips_per_step / median / num_devices,
  }


def achieved(flops_per_step: float, median_seconds: float, num_devices: int, peak_tflops):
  """(TFLOP/s in all, TFLOP/s per device, MFU or None) for model FLOPs per global step."""
  total = flops_per_step / median_seconds / 1e12
  per_device = total / num_devices
  mfu = per_device / peak_tflops if peak_tflops else None
  return total, per_device, mfu
