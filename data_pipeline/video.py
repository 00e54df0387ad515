"""The one type every dataset source yields: a video with per-frame annotations.

Sources (fpha, h2o, synthetic) turn a raw dataset folder into `Video`s; windowing cuts them into
clips; the TFRecord writer stores them. Everything downstream of a source is dataset-agnostic.
"""

import dataclasses
from typing import Callable, Tuple

import numpy as np


@dataclasses.dataclass
class Video:
  """One video (FPHA: a sequence; H2O: an action segment), frames in ascending order.

  All image-space quantities refer to the STORED image size `image_size` = (H, W): a source that
  resizes frames scales the 2D joints and the intrinsics to match.

  Attributes:
    video_id: unique within the dataset, e.g. 'Subject_1/charge_cell_phone/1' or 'h2o/0042'; the
      key for clip grouping and video-level voting.
    frame_idx: (L,) int64 raw frame numbers, consecutive (a gap is an error in the source).
    joints3d: (L, J, 3) float32 metres, camera space.
    joints2d: (L, J, 2) float32 pixels of the stored image.
    intrinsics: (3, 3) float32 for the stored image size (one per video in both datasets).
    hand_valid: (L, num_hands) bool; H2O marks a hand whose annotation flag is 0 as invalid.
    object: (L,) int32 object index per frame (-1 unknown).
    action: int action index of the video (-1 where the split has no labels).
    load_image: i -> (H, W, 3) uint8 frame i (0-based position, not the raw number), already at
      the stored size. Raises a clear error naming the file for a missing or corrupt image.
    image_size: (H, W).
    subject: the subject (split unit), informational.
  """
  video_id: str
  frame_idx: np.ndarray
  joints3d: np.ndarray
  joints2d: np.ndarray
  intrinsics: np.ndarray
  hand_valid: np.ndarray
  object: np.ndarray
  action: int
  load_image: Callable[[int], np.ndarray]
  image_size: Tuple[int, int]
  subject: str = ""

  def __len__(self) -> int:
    return int(self.frame_idx.shape[0])

  def validate(self, source: str = "") -> None:
    """Checks shapes and values; errors name the video (and `source`, e.g. a file)."""
    where = f"{source + ': ' if source else ''}video {self.video_id!r}"
    n = len(self)
    if n == 0:
      raise ValueError(f"{where}: the video has no frames")
    if np.any(np.diff(self.frame_idx) != 1):
      gap = int(np.argmax(np.diff(self.frame_idx) != 1))
      raise ValueError(f"{where}: frames are not consecutive (frame {self.frame_idx[gap]} is "
                       f"followed by {self.frame_idx[gap + 1]})")
    j = self.joints3d.shape[1] if self.joints3d.ndim == 3 else -1
    expected = {"joints3d": (n, j, 3), "joints2d": (n, j, 2), "intrinsics": (3, 3),
                "object": (n,)}
    for name, shape in expected.items():
      value = getattr(self, name)
      if value.shape != shape:
        raise ValueError(f"{where}: {name} has shape {value.shape}, expected {shape}")
    if self.hand_valid.shape[0] != n or self.hand_valid.ndim != 2:
      raise ValueError(f"{where}: hand_valid has shape {self.hand_valid.shape}, expected ({n}, hands)")
    for name in ("joints3d", "joints2d", "intrinsics"):
      value = getattr(self, name)
      if not np.isfinite(value).all():
        bad = np.argwhere(~np.isfinite(value))[0]
        raise ValueError(f"{where}: {name} has NaN or infinite values (first at index "
                         f"{tuple(int(i) for i in bad)})")
