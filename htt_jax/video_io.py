"""Frames in and out of `scripts/predict_video.py`: streamed decoding (a video file through PyAV,
or a folder of images), the camera of the input, the letterbox that fits a frame to the network's
`dataset.image_size`, and the H.264 writer of overlay.mp4.

Every check that can be made without decoding the whole input is made when the source is opened
(missing path, an empty file, not a video, no video stream, first frame undecodable, mixed sizes
in a folder, frames smaller than the backbone's stride), so a bad input fails before anything is
compiled. Errors are `config_lib.ConfigError` (or FileNotFoundError) naming the file. No JAX here.

A path may be a URL (gs://...): a video file is read through `storage.open_read`, which fetches
blocks as FFmpeg reads and seeks, so a long video is never downloaded whole; a frame folder is
listed with `storage.listdir` and each frame read with `storage.read_bytes`.
"""

import dataclasses
import io
import math
import os
import re
from fractions import Fraction
from typing import Iterator, Optional, Tuple

import numpy as np
from absl import logging
from PIL import Image

from htt_jax import config_lib, storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FPS = 30


def _error(path: str, message: str) -> config_lib.ConfigError:
  return config_lib.ConfigError(f"{path}: {message}")


def _name_order(name: str):
  """Name order that reads numbers as numbers: 1.png, 2.png, 10.png (as FFmpeg's `%d.png` writes
  them) in that order; zero-padded names sort as before."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", name) if part]


def _rgb(image: Image.Image) -> np.ndarray:
  """A decoded frame as (H, W, 3) uint8. 16-bit greyscale (PNG 'I;16', 'I') is scaled to 8 bits:
  Pillow's convert('RGB') clips it instead (a dark 16-bit frame came out nearly white)."""
  if image.mode.startswith("I;16") or image.mode == "I":
    grey = (np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"))


def _open_image(file: str) -> Image.Image:
  """A frame file as a (lazily decoded) PIL image: a local file by name, a URL's bytes fetched
  whole (a frame is small, and Pillow would otherwise issue many small reads to the store)."""
  return Image.open(io.BytesIO(storage.read_bytes(file))) if storage.is_url(file) else (
      Image.open(file))


class FrameSource:
  """A video's frames in order, decoded one at a time: `size` (H, W) and `fps` are known when the
  source is opened; `declared_frames` is what the container says (None when it does not say).
  `times`: each decoded frame's time in seconds from the first (appended as frames are decoded),
  for a video whose frames say it; None for a frame folder, whose times are index / fps."""

  path: str
  size: Tuple[int, int]
  fps: Fraction
  declared_frames: Optional[int]
  times: Optional[list] = None

  def __iter__(self) -> Iterator[np.ndarray]:
    raise NotImplementedError


class FolderSource(FrameSource):
  """png/jpg files of a folder in name order (numbers read as numbers: 2.png before 10.png). Sizes
  come from the files' headers (no decoding)."""

  def __init__(self, path: str, fps: Optional[float]):
    self.path = path
    names = sorted((n for n in storage.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)),
                   key=_name_order)
    if not names:
      raise _error(path, f"the folder holds no frames (expected {'/'.join(IMAGE_SUFFIXES)} files)")
    self.files = [os.path.join(path, n) for n in names]
    sizes = {}
    for file in self.files:
      try:
        with _open_image(file) as image:
          sizes.setdefault((image.height, image.width), file)
      except (OSError, SyntaxError, ValueError) as e:
        raise _error(file, f"not a readable image ({type(e).__name__}: {e})") from None
    if len(sizes) > 1:
      (a, first), (b, other) = list(sizes.items())[:2]
      raise _error(path, f"frames of different sizes: {os.path.basename(first)} is "
                         f"{a[1]}x{a[0]}, {os.path.basename(other)} is {b[1]}x{b[0]} (WxH); "
                         "every frame of a video must have the same size")
    self.size = next(iter(sizes))
    self.fps = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
    self.declared_frames = len(self.files)

  def __iter__(self):
    for file in self.files:
      try:
        with _open_image(file) as image:
          image.load()
          yield _rgb(image)
      except (OSError, SyntaxError, ValueError) as e:
        raise _error(file, f"cannot decode the frame ({type(e).__name__}: {e})") from None


def _declared_end(container, stream) -> Optional[float]:
  """When the video stream ends, in seconds, as the file declares it: the stream's own duration
  (mp4's index, MPEG-TS), else the file's (Matroska's header) when the video is its only stream
  (another stream, e.g. longer audio, would make the file's longer than the video); None if
  neither says."""
  if stream.duration and stream.time_base:
    return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
  if container.duration and len(container.streams) == 1:
    return ((container.start_time or 0) + container.duration) / 1e6
  return None


class AvSource(FrameSource):
  """A video file through PyAV (FFmpeg): one frame decoded at a time, so memory does not grow
  with the video's length. The first frame is decoded when opening, to fail early."""

  def __init__(self, path: str, fps: Optional[float]):
    import av  # pylint: disable=g-import-not-at-top
    self.path, self._av = path, av
    # FFmpeg's probe of an empty file seeks before its start, which PyAV raises as a bare
    # OSError (EINVAL) rather than an FFmpegError: a traceback, not a message naming the file.
    if storage.size(path) == 0:
      raise _error(path, "the file is empty (0 bytes), expected a video FFmpeg can decode")
    try:
      with storage.open_read(path) as file, av.open(file) as container:
        if not container.streams.video:
          # An mp4 whose video track has no samples reads back with no video stream at all.
          raise _error(path, "the video has zero frames (the file holds no video stream)")
        stream = container.streams.video[0]
        first = next(iter(container.decode(stream)), None)
        rate = stream.average_rate or stream.guessed_rate
        declared = stream.frames
        self._declared_end = _declared_end(container, stream)
    except av.error.EOFError:  # A header, nothing after it (an interrupted Matroska recording)
      raise _error(path, "the video has zero frames (the file ends after its header)") from None
    except av.error.FFmpegError as e:
      raise _error(path, f"not a video FFmpeg can decode ({type(e).__name__}: {e})") from None
    if first is None:
      raise _error(path, "the video has zero frames")
    self._stored = (first.height, first.width)
    # A display matrix (a phone's portrait video is stored landscape) turns the frames as players
    # show them: PyAV gives its angle counterclockwise (libavutil's av_display_rotation_get), and
    # np.rot90 turns counterclockwise. The model sees, and the overlay shows, the upright frames.
    rotation = int(getattr(first, "rotation", 0) or 0)
    self._turns = (rotation // 90) % 4 if rotation % 90 == 0 else 0
    if rotation % 90:
      logging.warning("%s: a display rotation of %d degrees is not a multiple of 90; the frames "
                      "are used as stored", path, rotation)
    elif self._turns:
      logging.info("%s: frames turned %d degrees counterclockwise, as its display matrix says",
                   path, 90 * self._turns)
    self.size = self._stored[::-1] if self._turns % 2 else self._stored
    self.fps = Fraction(fps).limit_denominator(1001) if fps else Fraction(rate or DEFAULT_FPS)
    # A variable frame rate (phones record one) is in the frames' times: the overlay keeps them.
    # --fps replaces the video's rate, and its times with it.
    self.times = None if fps else []
    self._frame_seconds = 1 / float(rate or self.fps)  # the stream's own, whatever --fps says
    self.declared_frames = int(declared) or None

  def __iter__(self):
    av, count, end, first_pts = self._av, 0, None, None
    if self.times is not None:
      self.times.clear()  # Filled again as this pass decodes (the list the writer holds).
    try:
      with storage.open_read(self.path) as file, av.open(file) as container:
        stream = container.streams.video[0]
        # Slice threads, not frame threads: frame threading's extra decoder threads competed with
        # XLA's for the CPU and lowered the end-to-end rate (docs/benchmarks.md, video mode).
        stream.thread_type = "SLICE"
        for frame in container.decode(stream):
          if (frame.height, frame.width) != self._stored:
            raise _error(self.path, f"the frame size changes at frame {count}: "
                                    f"{frame.width}x{frame.height}, the video starts at "
                                    f"{self._stored[1]}x{self._stored[0]} (WxH); every frame "
                                    "must have the same size")
          # A copy: the array PyAV returns keeps FFmpeg's frame buffer alive, and with a few hundred
          # of them in flight beside XLA the process grew with the video's length (measured).
          array = np.array(np.rot90(frame.to_ndarray(format="rgb24"), self._turns), order="C")
          if self.times is not None:
            if frame.pts is None or not frame.time_base:  # A frame without a time: one frame on.
              self.times.append(self.times[-1] + self._frame_seconds if self.times else 0.0)
            else:
              first_pts = frame.pts if first_pts is None else first_pts
              self.times.append(float((frame.pts - first_pts) * frame.time_base))
          yield array
          count += 1
          if frame.pts is not None and frame.time_base:
            step = frame.duration or (self._frame_seconds / frame.time_base)
            end = float((frame.pts + step) * frame.time_base)
    except av.error.FFmpegError as e:
      raise _error(self.path, f"the video is corrupt or truncated: decoding failed at frame "
                              f"{count} ({type(e).__name__}: {e})") from None
    # FFmpeg stops without an error on a file whose data ends early but whose index or header says
    # how long it is. Compared in time, not frames: an mp4 trimmed by an edit list (a phone's or
    # `ffmpeg -ss -c copy`'s cut) holds more samples than it shows, and Matroska counts none.
    if end is not None and self._declared_end is not None:
      if end < self._declared_end - self._frame_seconds:
        declares = (f"the stream declares {self.declared_frames} frames, "
                    if self.declared_frames else "")
        raise _error(self.path, f"the video is truncated: {count} frames decoded, {declares}"
                                f"{end:.2f} s of the {self._declared_end:.2f} s the file declares")
    elif self.declared_frames and count < self.declared_frames:
      raise _error(self.path, f"the video is truncated: {count} frames decoded, the stream "
                              f"declares {self.declared_frames}")


MIN_FPS = 0.001


def open_source(path: str, fps: Optional[float] = None) -> FrameSource:
  """A frame folder or a video file; checks what can be checked without decoding it all."""
  # The rate becomes a fraction with a denominator of at most 1001 (NTSC's 30000/1001): a rate
  # below 1/1000 would become 0.
  if fps is not None and not (math.isfinite(fps) and fps >= MIN_FPS):
    raise config_lib.ConfigError(f"--fps={fps} must be a number of frames per second of at least "
                                 f"{MIN_FPS}")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path}: no such video file or frame folder")
  source = FolderSource(path, fps) if storage.isdir(path) else AvSource(path, fps)
  stride = config_lib.BACKBONE_STRIDE
  if min(source.size) < stride:
    raise _error(path, f"frames are {source.size[1]}x{source.size[0]} (WxH), smaller than the "
                       f"backbone's stride of {stride} px")
  return source


def parse_intrinsics(text: str, source_path: str = "--intrinsics") -> np.ndarray:
  """'fx,fy,cx,cy' (pixels of the input's own resolution) -> (3, 3) float64."""
  parts = [p.strip() for p in str(text).split(",")]
  try:
    values = [float(p) for p in parts]
  except ValueError:
    values = []
  if len(values) != 4 or not all(math.isfinite(v) for v in values) or min(values[:2]) <= 0:
    raise config_lib.ConfigError(
        f"{source_path}={text!r}: expected four numbers fx,fy,cx,cy in pixels of the input "
        "(fx, fy > 0), e.g. --intrinsics=1395.7,1395.7,935.7,540.7")
  fx, fy, cx, cy = values
  return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def dataset_camera(config) -> Tuple[Tuple[float, float, float, float], Tuple[int, int]]:
  """(fx, fy, cx, cy) and the (H, W) they are for: the camera of the config's dataset."""
  name = config.dataset.name
  if name in ("fpha", "h2o"):
    import importlib  # pylint: disable=g-import-not-at-top
    module = importlib.import_module(f"data_pipeline.{name}")
    return (module.FX, module.FY, module.CX, module.CY), tuple(module.FULL_SIZE)
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  size = tuple(config.dataset.image_size)
  k = synthetic.intrinsics_for(size)
  return (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), size


def default_intrinsics(config, size: Tuple[int, int]) -> np.ndarray:
  """The dataset's camera scaled to an input of `size` (H, W); logs that depth is approximate."""
  (fx, fy, cx, cy), full = dataset_camera(config)
  sx, sy = size[1] / full[1], size[0] / full[0]
  logging.warning(
      "no --intrinsics: using the %s camera scaled to %dx%d (WxH); depth and 3D are approximate "
      "unless the video was filmed with that camera", config.dataset.name, size[1], size[0])
  return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class Letterbox:
  """Fits an input of `source` (H, W) into `target` (H, W) keeping the aspect ratio: scaled by
  `scale` (PIL bilinear), placed at (`left`, `top`), the rest black. A pixel u of the input lands
  at u * scale + left, so the principal point moves the same way and 2D outputs map back."""
  source: Tuple[int, int]
  target: Tuple[int, int]

  @property
  def scale(self) -> float:
    return min(self.target[0] / self.source[0], self.target[1] / self.source[1])

  @property
  def inner(self) -> Tuple[int, int]:
    return (max(1, round(self.source[0] * self.scale)), max(1, round(self.source[1] * self.scale)))

  @property
  def offset(self) -> Tuple[int, int]:
    """(left, top) in target pixels."""
    return ((self.target[1] - self.inner[1]) // 2, (self.target[0] - self.inner[0]) // 2)

  def _scales(self) -> Tuple[float, float]:
    return self.inner[1] / self.source[1], self.inner[0] / self.source[0]

  def image(self, frame: np.ndarray) -> np.ndarray:
    if tuple(frame.shape[:2]) != tuple(self.source):
      raise ValueError(f"a frame of {frame.shape[:2]}, the video's frames are {self.source}")
    if tuple(self.source) == tuple(self.target):
      return frame
    inner = Image.fromarray(frame).resize((self.inner[1], self.inner[0]),
                                          Image.Resampling.BILINEAR)
    out = np.zeros(tuple(self.target) + (3,), np.uint8)
    left, top = self.offset
    out[top:top + self.inner[0], left:left + self.inner[1]] = np.asarray(inner)
    return out

  def intrinsics(self, k: np.ndarray) -> np.ndarray:
    """Intrinsics of the input -> those of the letterboxed image."""
    (sx, sy), (left, top) = self._scales(), self.offset
    out = np.array(k, np.float64)
    out[0] *= sx
    out[1] *= sy
    out[0, 2] += left
    out[1, 2] += top
    return out

  def to_source(self, points: np.ndarray) -> np.ndarray:
    """(..., 2) pixels of the letterboxed image -> pixels of the input."""
    (sx, sy), (left, top) = self._scales(), self.offset
    points = np.asarray(points, np.float64)
    return np.stack([(points[..., 0] - left) / sx, (points[..., 1] - top) / sy], -1)


class OverlayWriter:
  """H.264 frames at the input's size and rate into `path` (a local mp4: the caller gives a
  temporary name from `storage.replacing`, which renames or uploads it when complete). 4:2:0 needs
  even sizes; odd ones use 4:4:4. With `times` (a source's `times`, read as frames are written:
  frame n's time in seconds), each frame keeps its time, so a variable-rate video's overlay plays
  in step with it; without, frame n is at n / fps."""

  TIME_BASE = Fraction(1, 90000)  # MPEG's clock: exact for 24, 25, 30 and 30000/1001 frames/s.

  def __init__(self, path: str, size: Tuple[int, int], fps: Fraction,
               times: Optional[list] = None):
    import av  # pylint: disable=g-import-not-at-top
    self.container = av.open(path, "w", format="mp4", options={"movflags": "faststart"})
    self.stream = self.container.add_stream("libx264", rate=fps)
    self._times, self._count, self._last_pts = times, 0, -1
    if times is not None:
      self.stream.codec_context.time_base = self.TIME_BASE
      self.stream.time_base = self.TIME_BASE
    self.stream.height, self.stream.width = size
    self.stream.pix_fmt = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
    # The fastest preset: the overlay only has to be watchable, and encoding shares the CPU with
    # the model (veryfast cost 1 ms a frame more at 192x320 on 2 cores: docs/benchmarks.md).
    self.stream.options = {"preset": "ultrafast", "crf": "23"}
    self._av = av

  def write(self, frame: np.ndarray) -> None:
    picture = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    if self._times is not None:
      # Strictly increasing, as the muxer needs, whatever the source's times are.
      pts = max(round(self._times[self._count] / self.TIME_BASE), self._last_pts + 1)
      picture.pts, picture.time_base, self._last_pts = pts, self.TIME_BASE, pts
    self._count += 1
    for packet in self.stream.encode(picture):
      self.container.mux(packet)

  def close(self, flush: bool = True) -> None:
    try:
      if flush:
        for packet in self.stream.encode():
          self.container.mux(packet)
    finally:
      self.container.close()

