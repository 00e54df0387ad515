"""The reference's clip rules (reference.md §3.4-3.5) and the storage windows that reproduce them.

Positions are 0-based frame positions inside one video (raw frame numbers are consecutive, so a
position maps to `frame_idx[position]`). With spacing s, a clip samples one parity p = start mod s:
the sub-sequence of positions p, p + s, p + 2s, ... ("sub-sampled frames").

Reference (reference.md §3.4): position q starts a training clip iff q mod (T*s) <
t*s, an evaluation clip iff q mod (T*s) < s. A clip steps +s from its start while the next frame
exists and then repeats the last valid frame with not_padding = 0 (reference.md §3.5).

Storage: the training starts of parity p are sub-sampled indices T*k + m, m in [0, t), so the
window of sub-sampled frames [T*k, T*k + T + t - 1) of that parity holds every training clip of
block k (offset m = frames [m, m + T)), and its offset 0 is the evaluation clip. A window stops at
the end of its video; clip frames beyond it are padding, exactly as in the reference.

Everything here is plain numpy/Python so the rules can be tested independently of TensorFlow.
"""

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Window:
  """One storage window: sub-sampled frames [T*block, T*block + n) of parity `parity`.

  Attributes:
    parity: p in [0, spacing): the window holds positions p + spacing*j.
    block: k: the window starts at sub-sampled index T*k (position p + spacing*T*k).
    positions: (n,) int64 frame positions in the video, n = min(T + t - 1, frames left).
    num_train_offsets: offsets m in [0, t) that are training clip starts (T*k + m still inside the
      parity's sub-sequence) = min(t, frames left).
  """
  parity: int
  block: int
  positions: np.ndarray
  num_train_offsets: int

  @property
  def start(self) -> int:
    """Position of the window's first frame (= the evaluation clip's start)."""
    return int(self.positions[0])


def subsequence_length(length: int, parity: int, spacing: int) -> int:
  """Number of positions p, p + s, ... below `length`."""
  return max(0, (length - parity + spacing - 1) // spacing)


def _check(length: int, num_frames: int, window: int, spacing: int) -> None:
  if length < 0 or num_frames < 1 or spacing < 1 or not 1 <= window <= num_frames:
    raise ValueError(f"bad windowing arguments: length={length}, T={num_frames}, t={window}, "
                     f"spacing={spacing} (need T >= 1, 1 <= t <= T, spacing >= 1)")


def storage_windows(length: int, num_frames: int, window: int, spacing: int = 2) -> List[Window]:
  """The windows that store a video of `length` frames, in the reference's order.

  Order = ascending first position, i.e. block-major then parity: (k=0, p=0), (k=0, p=1), (k=1,
  p=0), ... This is the order of the evaluation starts 0, 1, T*s, T*s + 1, ...
  """
  _check(length, num_frames, window, spacing)
  stored = num_frames + window - 1
  windows = []
  block = 0
  while True:
    found = False
    for parity in range(spacing):
      left = subsequence_length(length, parity, spacing) - num_frames * block
      if left <= 0:
        continue
      found = True
      first = num_frames * block
      n = min(stored, left)
      positions = parity + spacing * (first + np.arange(n, dtype=np.int64))
      windows.append(Window(parity, block, positions, min(window, left)))
    if not found:
      return windows
    block += 1


def window_clip(win: Window, offset: int, num_frames: int) -> Tuple[np.ndarray, np.ndarray]:
  """Positions (T,) and not_padding (T,) of the clip at `offset` of a window: what schema.cut_clip
  cuts from a stored record, in frame positions (the tests' oracle for it)."""
  n = len(win.positions)
  index = offset + np.arange(num_frames)
  return win.positions[np.minimum(index, n - 1)], (index < n).astype(np.float32)


def clip_order(windows: Sequence[Window], all_train_offsets: bool) -> List[Tuple[int, int]]:
  """(window index, offset) pairs of a video's clips, in the reference's order (start ascending).

  Evaluation: offset 0 of every window. Training: every offset m < num_train_offsets; the starts
  of one block interleave over parities (0, 1, 2, ... for s = 2), hence the sort.
  """
  pairs = [(i, m) for i, w in enumerate(windows)
           for m in range(w.num_train_offsets if all_train_offsets else 1)]
  return sorted(pairs, key=lambda im: int(windows[im[0]].positions[im[1]]))


def reference_train_starts(length: int, num_frames: int, window: int,
                           spacing: int = 2) -> np.ndarray:
  """Training clip starts of the reference: q with q mod (T*s) < t*s (reference.md §3.4)."""
  _check(length, num_frames, window, spacing)
  q = np.arange(length)
  return q[q % (num_frames * spacing) < window * spacing]


def reference_eval_starts(length: int, num_frames: int, spacing: int = 2) -> np.ndarray:
  """Evaluation clip starts of the reference: q with q mod (T*s) < s (reference.md §3.4)."""
  q = np.arange(length)
  return q[q % (num_frames * spacing) < spacing]


def clip_positions(length: int, start: int, num_frames: int,
                   spacing: int = 2) -> Tuple[np.ndarray, np.ndarray]:
  """The reference's clip from `start` (reference.md §3.5): positions (T,) and not_padding
  (T,) float32.

  Written as the reference's step loop (not as a formula) so that tests compare two independent
  derivations: each step moves +spacing while the next frame exists; after the first invalid step
  the index stays at the last valid frame and every remaining frame is padding.
  """
  if not 0 <= start < length:
    raise ValueError(f"clip start {start} outside a video of {length} frames")
  positions, not_padding = [start], [1.0]
  current, padding = start, False
  for _ in range(num_frames - 1):
    if not padding and current + spacing < length:
      current += spacing
    else:
      padding = True
    positions.append(current)
    not_padding.append(0.0 if padding else 1.0)
  return np.asarray(positions, np.int64), np.asarray(not_padding, np.float32)


def count_clips(length: int, num_frames: int, window: int, spacing: int = 2) -> Tuple[int, int]:
  """(training clips, evaluation clips) of a video, from its windows."""
  windows = storage_windows(length, num_frames, window, spacing)
  return sum(w.num_train_offsets for w in windows), len(windows)


def stored_frames(length: int, num_frames: int, window: int, spacing: int = 2) -> int:
  """Frames stored for a video (<= length * (T + t - 1) / T)."""
  return sum(len(w.positions) for w in storage_windows(length, num_frames, window, spacing))
