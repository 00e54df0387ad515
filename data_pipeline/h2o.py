"""H2O (two hands and objects) source: a raw dataset folder -> one `Video` per action segment.

Reads the files the reference reads (reference.md §3.2), under `raw_dir`:
  action_labels/action_{train,val,test}.txt   header line, then one line per segment:
      train/val: `id path action_label start_act end_act start_frame end_frame`;
      test:      `id path start_act end_act start_frame end_frame` (public file, no labels), or the
                 reference's labelled layout with the label as an extra LAST column.
  <path>/cam4/hand_pose/{f:06d}.txt           128 numbers: left flag, 21 x 3 left xyz, right flag,
                                              21 x 3 right xyz; cam4 camera space, metres.
  <path>/cam4/rgb480_270/{f:06d}.png          480x270 frames, or else
  <path>/cam4/rgb/{f:06d}.png                 1280x720 originals, shrunk here as the reference's
                                              preprocessing did (OpenCV INTER_LINEAR, image_io).
A segment covers frames start_act..end_act inclusive; segments come in file order (the reference
indexes its segment list with id - 1, so ids must be 1..n in order). Joints 0-20 are the left
hand, 21-41 the right, in H2O's native order. Action index = label - 1; the object of every frame
is the last word of the action name.

Decisions (reference.md §6):
  6.11 The public action_test.txt has no labels. A 6-column test file gives unlabelled videos
       (action -1, object -1), frames from its start_act/end_act columns; use `val` for local
       validation. A 7-column test file is read as the reference does (start/end in columns 2-3,
       label in the last column).
  6.12 The reference ignores the validity flags. Here a hand whose flag is 0 keeps its 3D values
       but is marked invalid in `hand_valid` and gets 2D (0, 0): projecting its zeros would divide
       by z = 0. A hand marked valid with a joint at z <= 0 is an error.
  6.13 One fixed cam4 intrinsics for every sequence.
"""

import os
from typing import Dict, Iterator, List, NamedTuple, Tuple

import numpy as np

from data_pipeline import image_io
from data_pipeline.video import Video

SPLITS = ("train", "val", "test")
# Index = H2O action id - 1 (id 0, background, is never used), reference.md §3.2.
ACTIONS = (
    "grab book", "grab espresso", "grab lotion", "grab spray", "grab milk", "grab cocoa",
    "grab chips", "grab cappuccino", "place book", "place espresso", "place lotion",
    "place spray", "place milk", "place cocoa", "place chips", "place cappuccino", "open lotion",
    "open milk", "open chips", "close lotion", "close milk", "close chips", "pour milk",
    "take out espresso", "take out cocoa", "take out chips", "take out cappuccino",
    "put in espresso", "put in cocoa", "put in cappuccino", "apply lotion", "apply spray",
    "read book", "read espresso", "spray spray", "squeeze lotion")
# Index = H2O object id - 1 (0, background, removed).
OBJECTS = ("book", "espresso", "lotion", "spray", "milk", "cocoa", "chips", "cappuccino")
NUM_JOINTS = 42
POSE_NUMBERS = 128  # [left flag, 63 left xyz, right flag, 63 right xyz]
# cam4 at full resolution (H, W) = (720, 1280), the same for every sequence (reference.md §6.13).
FX, FY, CX, CY = 636.6593017578125, 636.251953125, 635.283881879317, 366.8740353496978
FULL_SIZE = (720, 1280)


class Segment(NamedTuple):
  line: int
  seg_id: int
  path: str
  action: int  # index, -1 unlabelled
  start: int
  end: int


def load_vocabulary(raw_dir: str) -> Dict[str, List[str]]:
  """The fixed 36 actions and 8 objects (raw_dir unused: H2O has no vocabulary file)."""
  del raw_dir
  return {"actions": list(ACTIONS), "objects": list(OBJECTS)}


def _object_of(action: int) -> int:
  return OBJECTS.index(ACTIONS[action].split()[-1]) if action >= 0 else -1


def _segments(raw_dir: str, split: str) -> Tuple[str, List[Segment]]:
  """(split file path, its segments in file order); every line is checked before any is used."""
  if split not in SPLITS:
    raise ValueError(f"unknown H2O split {split!r}; expected one of {SPLITS}")
  path = os.path.join(raw_dir, "action_labels", f"action_{split}.txt")
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise image_io.MissingFileError(f"{path}: split file not found") from None
  layouts = {7: "id path action_label start_act end_act start_frame end_frame"}
  if split == "test":
    layouts = {6: "id path start_act end_act start_frame end_frame",
               7: "id path start_act end_act start_frame end_frame action_label"}
  expected = " or ".join(repr(v) for v in layouts.values())
  segments = []
  for n, line in enumerate(lines[1:], start=2):  # line 1 is the header
    fields = line.split()
    if not fields:
      continue
    numbers = fields[:1] + fields[2:]
    if (len(fields) not in layouts or len(fields[1].split("/")) != 3
        or not all(v.lstrip("-").isdigit() for v in numbers)):
      raise ValueError(f"{path}:{n}: expected {expected}, got {line!r}")
    seg_id, rel = int(fields[0]), fields[1]
    if split == "test":
      start, end = int(fields[2]), int(fields[3])
      label = int(fields[-1]) if len(fields) == 7 else None
    else:
      label, start, end = int(fields[2]), int(fields[3]), int(fields[4])
    if seg_id != len(segments) + 1:
      raise ValueError(f"{path}:{n}: segment id {seg_id}, expected {len(segments) + 1} (ids must "
                       f"be 1..n in file order)")
    if label is not None and not 1 <= label <= len(ACTIONS):
      raise ValueError(f"{path}:{n}: unknown action label {label}, expected 1..{len(ACTIONS)}")
    if end < start or start < 0:
      raise ValueError(f"{path}:{n}: empty or negative frame range {start}..{end}")
    segments.append(Segment(n, seg_id, rel, label - 1 if label is not None else -1, start, end))
  if not segments:
    raise ValueError(f"{path}: no segments")
  return path, segments


def split_segments(raw_dir: str, split: str) -> List[Segment]:
  """The split file's segments in file order (id, sequence path, frame range; checked as above).

  Challenge exports (htt_jax/h2o_export.py) use it to name frames by their sequence path."""
  return _segments(raw_dir, split)[1]


def _read_pose(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """(42, 3) float64 metres and (2,) bool validity [left, right] of one hand_pose file."""
  try:
    with open(path, encoding="utf-8") as f:
      fields = f.read().split()
  except FileNotFoundError:
    raise image_io.MissingFileError(f"{path}: hand pose file not found") from None
  if len(fields) != POSE_NUMBERS:
    raise ValueError(f"{path}: {len(fields)} numbers, expected {POSE_NUMBERS} (left flag, 63 "
                     f"left xyz, right flag, 63 right xyz)")
  try:
    values = np.array([float(v) for v in fields])
  except ValueError:
    raise ValueError(f"{path}: expected {POSE_NUMBERS} numbers, found a non-number") from None
  if not np.isfinite(values).all():
    first = int(np.argmin(np.isfinite(values)))
    raise ValueError(f"{path}: NaN or infinite value (number {first + 1} of {POSE_NUMBERS})")
  flags = values[[0, 64]]
  if not np.isin(flags, (0, 1)).all():
    raise ValueError(f"{path}: hand flags (numbers 1 and 65) are {flags.tolist()}, expected 0 or 1")
  joints = np.concatenate([values[1:64], values[65:128]]).reshape(NUM_JOINTS, 3)
  return joints, flags == 1


def _frame_loader(raw_dir: str, segment: Segment, image_size):
  """Reads the 480x270 frames, or shrinks the originals when rgb480_270 is absent."""
  cam = os.path.join(raw_dir, segment.path, "cam4")
  small, full = os.path.join(cam, "rgb480_270"), os.path.join(cam, "rgb")
  frames = range(segment.start, segment.end + 1)
  if os.path.isdir(small):
    return image_io.FrameLoader(os.path.join(small, "{frame:06d}.png"), frames, image_size)
  if os.path.isdir(full):
    return image_io.FrameLoader(os.path.join(full, "{frame:06d}.png"), frames, image_size,
                                file_size=FULL_SIZE, base_resize="cv_linear")
  raise image_io.MissingFileError(f"{small}: frame folder not found (nor the originals' {full})")


def project(joints: np.ndarray, valid: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
  """(L, 42, 2) pixels of the stored image; hands not valid get (0, 0) (reference.md §6.12)."""
  joint_valid = np.repeat(valid, NUM_JOINTS // 2, axis=1)  # (L, 42)
  z = np.where(joint_valid, joints[..., 2], 1.0)
  u = FX * joints[..., 0] / z + CX
  v = FY * joints[..., 1] / z + CY
  # Projected at full resolution, then scaled to the stored size (the reference's x0.375).
  uv = np.stack([u * image_size[1] / FULL_SIZE[1], v * image_size[0] / FULL_SIZE[0]], axis=-1)
  return np.where(joint_valid[..., None], uv, 0.0)


def iter_videos(raw_dir: str, split: str,
                image_size: Tuple[int, int] = image_io.REFERENCE_SIZE) -> Iterator[Video]:
  """The split's action segments in file order, one `Video` each; images load lazily."""
  image_size = image_io.check_image_size(image_size)
  split_path, segments = _segments(raw_dir, split)
  intrinsics = image_io.scale_intrinsics(FX, FY, CX, CY, FULL_SIZE, image_size)
  for segment in segments:
    where = f"segment {segment.seg_id} ({split_path}:{segment.line})"
    pose_dir = os.path.join(raw_dir, segment.path, "cam4", "hand_pose")
    frames = np.arange(segment.start, segment.end + 1, dtype=np.int64)
    joints = np.empty((len(frames), NUM_JOINTS, 3))
    valid = np.empty((len(frames), 2), dtype=bool)
    for i, frame in enumerate(frames):
      pose_path = os.path.join(pose_dir, f"{frame:06d}.txt")
      try:
        joints[i], valid[i] = _read_pose(pose_path)
      except image_io.MissingFileError:
        # A missing frame inside the segment would be a gap in the video.
        raise image_io.MissingFileError(
            f"{pose_path}: hand pose file not found; {where} covers frames {segment.start}.."
            f"{segment.end}") from None
      for hand in np.flatnonzero(valid[i]):
        if not (joints[i, 21 * hand:21 * (hand + 1), 2] > 0).all():
          raise ValueError(f"{pose_path}: the {('left', 'right')[hand]} hand is marked valid but "
                           f"has a joint at z <= 0")
    video = Video(
        video_id=f"{split}/{segment.seg_id:04d}",
        frame_idx=frames,
        joints3d=joints.astype(np.float32),
        joints2d=project(joints, valid, image_size).astype(np.float32),
        intrinsics=intrinsics.astype(np.float32),
        hand_valid=valid,
        object=np.full((len(frames),), _object_of(segment.action), dtype=np.int32),
        action=segment.action,
        load_image=_frame_loader(raw_dir, segment, image_size),
        image_size=image_size,
        subject=segment.path.split("/")[0])
    video.validate(source=where)
    yield video
