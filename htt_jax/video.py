"""A video's frames as clips, and the three overlapped stages that run them (the streaming part
of `video_predict.predict_video`, behind `scripts/predict_video.py`; docs/video.md).

The frames are grouped as the reference's evaluation groups a video (reference.md §3.4-3.5,
`data_pipeline/windowing.py`): with spacing s, every block of T*s frames holds the evaluation clips
that start at its positions 0..s-1, each clip every s-th frame of the block, and the last block's
clips padded by repeating their last frame. So every frame is in exactly one clip as a valid
frame and gets exactly one prediction, and a block can be cut, run and drawn without the rest of
the video: memory stays flat however long the video is.

Three stages overlap (threads; decoding in FFmpeg, drawing in Pillow/NumPy and XLA release the
GIL): decoding and letterboxing blocks, the model (`inference.Predictor.stream`, the compiled
forward evaluation uses), and collecting the per-frame outputs and drawing overlay.mp4. The
queues between them hold at most two batches, so at most ~4 batches of frames are alive.

`Collector` gathers the per-frame outputs in frame order (what predictions.npz holds), draws
overlay.mp4's frames and keeps the little the figures need (clips 0 and 2).
"""

import contextlib
import dataclasses
import queue
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np

from data_pipeline import windowing
from htt_jax import video_io, video_render

FIG7_CLIPS = (0, 2)  # The first clip (parity 0) of the first two blocks.
FIG6_WINDOWS = 2  # Windows of clip 0 drawn as Fig. 6.
FIG6_FRAMES = 4  # Frames shown per window.
_DONE = object()


@dataclasses.dataclass
class Block:
  """Frames [first, first + len(originals)) of a video: a T*s block and its evaluation clips."""
  first: int
  originals: List[np.ndarray]  # Input resolution, for the overlay.
  positions: np.ndarray  # (C, T) positions inside the block (windowing.clip_positions).
  not_padding: np.ndarray  # (C, T)
  images: np.ndarray  # (C, T, H, W, 3) letterboxed to dataset.image_size.


def make_block(first: int, frames: List[np.ndarray], letterbox: video_io.Letterbox,
               num_frames: int, spacing: int) -> Block:
  n = len(frames)
  fitted = [letterbox.image(f) for f in frames]
  clips = [windowing.clip_positions(n, int(start), num_frames, spacing)
           for start in windowing.reference_eval_starts(n, num_frames, spacing)]
  positions = np.stack([p for p, _ in clips])
  images = np.stack([np.stack([fitted[i] for i in p]) for p in positions])
  return Block(first, frames, positions, np.stack([v for _, v in clips]), images)


def iter_blocks(frames: Iterable[np.ndarray], letterbox, num_frames: int,
                spacing: int) -> Iterator[Block]:
  size, buffer, first = num_frames * spacing, [], 0
  for frame in frames:
    buffer.append(frame)
    if len(buffer) == size:
      yield make_block(first, buffer, letterbox, num_frames, spacing)
      first, buffer = first + size, []
  if buffer:
    yield make_block(first, buffer, letterbox, num_frames, spacing)


def iter_batches(blocks: Iterable[Block], blocks_per_batch: int,
                 intrinsics: np.ndarray) -> Iterator[dict]:
  """Whole blocks per batch, so the overlay can draw a batch's frames in order."""
  group = []

  def batch():
    images = np.concatenate([b.images for b in group])
    k = np.broadcast_to(intrinsics.astype(np.float32), images.shape[:2] + (3, 3))
    return {"image": images, "intrinsics": k,
            "not_padding": np.concatenate([b.not_padding for b in group]), "blocks": group}

  for block in blocks:
    group.append(block)
    if len(group) == blocks_per_batch:
      yield batch()
      group = []
  if group:
    yield batch()


class Timer:
  """Busy seconds per stage (decode, model, render), for the benchmark's shares."""

  def __init__(self):
    self.seconds = {"decode": 0.0, "model": 0.0, "model_wait": 0.0, "render": 0.0}

  def busy(self) -> Dict[str, float]:
    """Seconds each stage worked: decode, model (less its wait for decoding), render."""
    s = self.seconds
    return {"decode": s["decode"], "model": s["model"] - s["model_wait"], "render": s["render"]}

  def timed(self, stage: str, iterator: Iterator) -> Iterator:
    while True:
      start = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        self.seconds[stage] += time.perf_counter() - start
        return
      self.seconds[stage] += time.perf_counter() - start
      yield item


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def run_overlapped(batches: Iterator[dict], model: Callable[[Iterator[dict]], Iterator[dict]],
                   consume: Callable[[dict, dict], None], timer: Timer) -> None:
  """Decoding (`batches`) and `consume` in threads of their own around `model` in this thread.

  The first error of any stage stops the others and is raised here.
  """
  inputs, results = queue.Queue(maxsize=2), queue.Queue(maxsize=2)
  stop, errors = threading.Event(), []

  def produce():
    try:
      for batch in timer.timed("decode", batches):
        if not _put(inputs, batch, stop):
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the caller)
      errors.append(e)
    finally:
      _put(inputs, _DONE, stop)

  def render():
    try:
      while True:
        try:
          item = results.get(timeout=0.1)
        except queue.Empty:
          if stop.is_set():  # Another stage failed: its error is raised, nothing more to draw.
            return
          continue
        if item is _DONE:
          return
        start = time.perf_counter()
        consume(*item)
        timer.seconds["render"] += time.perf_counter() - start
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      stop.set()

  def from_queue():
    while True:
      item = inputs.get()
      if item is _DONE or stop.is_set():
        return
      yield item

  threads = [threading.Thread(target=produce, daemon=True, name="video-decode"),
             threading.Thread(target=render, daemon=True, name="video-render")]
  for thread in threads:
    thread.start()
  try:
    pending = []

    def keep(source):  # The batch beside its outputs: consume needs both.
      for batch in timer.timed("model_wait", source):  # Waiting for decoding is not model time.
        pending.append(batch)
        yield batch

    for outputs in timer.timed("model", model(keep(from_queue()))):
      if not _put(results, (pending.pop(0), outputs), stop):
        break
  except BaseException as e:  # pylint: disable=broad-except
    errors.append(e)
  if errors:
    stop.set()
  else:  # The renderer finishes what is queued (a renderer's error sets `stop`).
    _put(results, _DONE, stop)
  for thread in threads:
    while thread.is_alive():
      with contextlib.suppress(queue.Empty):  # Unblock a producer waiting on a full queue.
        inputs.get_nowait()
      thread.join(timeout=0.1)
  if errors:
    raise errors[0]


class Collector:
  """Per-frame outputs in frame order, the overlay, and what the figures need (small)."""

  def __init__(self, letterbox, names, writer: Optional[video_io.OverlayWriter],
               num_frames: int, window: int):
    self.letterbox, self.names, self.writer = letterbox, names, writer
    self.t_clip, self.window = num_frames, window
    self.frames: Dict[str, list] = {k: [] for k in (
        "frame_index", "joints2d", "joints3d", "object_probs", "action_probs")}
    self.clips: List[dict] = []  # Per clip: first frame, action_probs, action token attention.
    self.figure_clips: Dict[int, dict] = {}

  def __call__(self, batch: dict, outputs: dict) -> None:
    row = 0
    for block in batch["blocks"]:
      n = len(block.originals)
      per_frame = {k: [None] * n for k in self.frames if k != "frame_index"}
      for c in range(len(block.positions)):
        out = {k: outputs[k][row] for k in outputs}
        valid = block.not_padding[c] > 0
        for j in np.flatnonzero(valid):
          p = int(block.positions[c, j])
          per_frame["joints2d"][p] = self.letterbox.to_source(out["joints2d"][j])
          per_frame["joints3d"][p] = out["joints3d"][j]
          per_frame["object_probs"][p] = out["object_probs"][j]
          per_frame["action_probs"][p] = out["action_probs"]
        clip_index = len(self.clips)
        self.clips.append({"first_frame": block.first + int(block.positions[c, 0]),
                           "last_frame": block.first + int(block.positions[c][valid][-1]),
                           "action_probs": out["action_probs"],
                           # The action token's row of A's last layer, over the T frame tokens.
                           "attention": out["action_attention"][-1, 0, 1:]})
        if clip_index in FIG7_CLIPS or (clip_index == 0 and FIG6_WINDOWS):
          self._keep_for_figures(clip_index, block, c, out)
        row += 1
      if any(v is None for v in per_frame["joints3d"]):
        raise AssertionError("a frame of the block got no prediction")  # windowing's promise
      self.frames["frame_index"].append(block.first + np.arange(n))
      for k, v in per_frame.items():
        self.frames[k].append(np.stack(v).astype(np.float32))
      if self.writer is not None:
        for i, frame in enumerate(block.originals):
          self.writer.write(video_render.overlay_frame(
              frame, per_frame["joints2d"][i], self._lines(block.first + i, per_frame, i)))

  def _lines(self, number: int, per_frame: dict, i: int) -> List[str]:
    action, obj = per_frame["action_probs"][i], per_frame["object_probs"][i]
    a, o = int(np.argmax(action)), int(np.argmax(obj))
    return [f"frame {number}",
            f"action: {video_render.label(self.names['actions'], a)} {action[a]:.2f}",
            f"object: {video_render.label(self.names['objects'], o)} {obj[o]:.2f}"]

  def _keep_for_figures(self, clip_index: int, block: Block, c: int, out: dict) -> None:
    valid = int(block.not_padding[c].sum())
    thumbs, scale = {}, 1.0
    for j in range(valid):
      thumbs[j], scale = video_render.thumbnail(block.originals[int(block.positions[c, j])])
    self.figure_clips[clip_index] = {
        "thumbnails": thumbs, "scale": scale, "valid": valid,
        "frame_numbers": block.first + block.positions[c],
        "not_padding": block.not_padding[c],
        "joints2d": np.stack([self.letterbox.to_source(p) for p in out["joints2d"]]),
        "joints3d": out["joints3d"], "pose_attention": out["pose_attention"][-1]}

  def arrays(self) -> Dict[str, np.ndarray]:
    out = {k: np.concatenate(v) for k, v in self.frames.items()}
    out["frame_index"] = out["frame_index"].astype(np.int64)
    # Soft vote over the clips, as evaluation (metrics.video_accuracy), as probabilities.
    out["video_action_probs"] = np.mean([c["action_probs"] for c in self.clips], 0).astype(
        np.float32)
    return out

