"""--mode=video: `predict_video` end to end (decoding, the model, the overlay drawn and encoded,
overlapped in threads) against the model's forward pass alone, on the same compiled program.

The input is an H.264 mp4 generated here at INPUT_SCALE x `dataset.image_size` (so decoding,
the letterbox's resize and the overlay work on more pixels than the model sees, as with a real
camera), of enough frames for `warmup_steps + timed_steps` batches, twice over. The model alone
is timed as the eval mode times it (one batch of `batch_size` clips already in memory, median of
`timed_steps` calls after `warmup_steps`); the video is run once after that, so nothing compiles
inside its wall time. The row: `frames_per_second` end to end, `model_frames_per_second`,
`fraction_of_model` (their ratio; the issue asks >= 0.8), and each stage's busy seconds per frame
and share of the wall time (the shares add up to more than 1 when the stages overlap).
"""

import os
import shutil
import tempfile
import time
from fractions import Fraction
from typing import Any, Dict

import jax
import numpy as np

from htt_jax import steps, video, video_io
from htt_jax.benchmark import measure as measure_lib
from htt_jax.benchmark import timing

MODES = ("video",)
INPUT_SCALE = 2
FPS = 30


def _write_video(path: str, size, count: int, seed: int = 0) -> None:
  """Smooth moving shapes (textured like a real scene more than noise is), `count` frames."""
  rng = np.random.default_rng(seed)
  height, width = size
  y, x = np.mgrid[0:height, 0:width]
  background = (np.stack([x * 200 // width, y * 200 // height, (x + y) * 100 // (width + height)],
                         -1) + rng.integers(0, 20, (height, width, 3))).astype(np.uint8)
  writer = video_io.OverlayWriter(path, size, Fraction(FPS))
  try:
    for i in range(count):
      frame = background.copy()
      cx, cy = int(width * (0.5 + 0.3 * np.sin(i / 15))), int(height * (0.5 + 0.2 * np.cos(i / 11)))
      frame[max(0, cy - height // 8):cy + height // 8, max(0, cx - width // 10):cx + width // 10] = (
          230, 190, 150)
      writer.write(frame)
  finally:
    writer.close()


def measure(config, mode: str = "video") -> Dict[str, Any]:
  """One setting (already validated by runner.prepare): its row without the shared fields."""
  from htt_jax import inference, video_predict  # pylint: disable=g-import-not-at-top
  devices = measure_lib.resolve_devices(config.num_devices)
  n = len(devices)
  spacing, t_clip = config.dataset.spacing, config.model.num_frames
  batch_size = -(-config.batch_size // spacing) * spacing  # whole blocks, as predict_video
  frames_per_batch = batch_size * t_clip
  variables = jax.device_get(steps.random_variables(config, jax.random.key(config.seed)))
  predictor = inference.Predictor(config, variables, batch_size=batch_size)
  batch = measure_lib.random_batch(config, batch_size, config.seed)
  start = time.perf_counter()
  next(predictor.stream([batch]))  # Compiles the program the video runs.
  compile_s = time.perf_counter() - start
  times = timing.time_steps(lambda: next(predictor.stream([batch])), config.warmup_steps,
                            config.timed_steps)
  row: Dict[str, Any] = {"mode": mode, "num_devices": n, "device_kind": devices[0].device_kind,
                         "platform": devices[0].platform, "warmup_steps": config.warmup_steps,
                         "compile_time_s": compile_s, "lower_time_s": None}
  row.update(timing.summarize(times, frames_per_batch, batch_size, n))
  model_fps = row["frames_per_second"]

  size = tuple(s * INPUT_SCALE for s in config.dataset.image_size)
  count = 2 * (config.warmup_steps + config.timed_steps) * frames_per_batch
  folder = tempfile.mkdtemp(prefix="htt_jax_video_bench_")
  try:
    path = os.path.join(folder, "input.mp4")
    _write_video(path, size, count)
    height, width = size
    intrinsics = f"{1.2 * width},{1.2 * width},{width / 2},{height / 2}"
    timer = video.Timer()
    start = time.perf_counter()
    video_predict.predict_video(config, None, path, os.path.join(folder, "out"),
                                intrinsics=intrinsics, variables=variables, figures=False,
                                timer=timer, predictor=predictor)
    wall = time.perf_counter() - start
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  busy = timer.busy()
  row.update({
      "model_frames_per_second": model_fps,
      "frames_per_second": count / wall,
      "frames_per_second_per_device": count / wall / n,
      "fraction_of_model": count / wall / model_fps,
      "video_batch_size": batch_size, "video_frames": count, "video_size": list(size),
      "video_wall_s": wall,
      **{f"{stage}_ms_per_frame": 1e3 * s / count for stage, s in busy.items()},
      **{f"{stage}_share": s / wall for stage, s in busy.items()},
  })
  row.update({k: None for k in (
      "peak_memory_bytes_xla", "memory_xla", "flops_per_frame_xla", "peak_memory_bytes_device",
      "flops_per_frame_analytic", "flops_per_frame_analytic_unpadded", "model_tflops_per_second",
      "model_tflops_per_second_per_device", "peak_tflops_per_device", "mfu")})
  return row
