"""FPHA (First-Person Hand Action benchmark) source: a raw dataset folder -> `Video`s.

Reads the files the reference reads (reference.md §3.1), under `raw_dir`:
  data_split_action_recognition.txt    line 1 = training header, then `Subject_k/action/seq label`
                                       lines; a line starting with 'Test' starts the test list.
  action_object_info.txt               header, then `action_id action_name object_name ...`;
                                       actions and objects are numbered in file order.
  Subjects_info/Subject_k_info.txt     3 header lines, then `action_name seq_idx num_frames`.
  Hand_pose_annotation_v1/Subject_k/<action>/<seq>/skeleton.txt
                                       one row per frame: frame index + 21 x (x, y, z) world mm.
  Video_files_480/Subject_k/<action>/<seq>/color/color_{:04d}.jpeg   480x270 frames, or else
  Video_files/Subject_k/<action>/<seq>/color/color_{:04d}.jpeg       1920x1080 originals, shrunk
                                       here as the reference's preprocessing did (image_io).
One video per split-file line, in file order, frames 0..num_frames-1 (count from Subjects_info).
Joints: FPHA's native order reordered to wrist, then thumb..pinky MCP->tip; world -> colour camera
with the fixed extrinsic; metres; 2D projected with the full-resolution intrinsics and scaled to
the stored image size, like the intrinsics.
"""

import functools
import os
from typing import Dict, Iterator, List, Tuple

from absl import logging
import numpy as np

from data_pipeline import image_io
from data_pipeline.video import Video

SPLITS = ("train", "test")
SPLIT_FILE = "data_split_action_recognition.txt"
ACTION_FILE = "action_object_info.txt"
NUM_JOINTS = 21
# Native FPHA joint order -> wrist, thumb MCP..TIP, index, middle, ring, pinky (reference.md §3.1).
JOINT_ORDER = (0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20)
# World -> colour camera, X_cam = R X + t, millimetres (reference.md §3.1).
CAM_EXTRINSIC = np.array([
    [0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
    [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
    [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902]])
# Colour camera at full resolution (H, W) = (1080, 1920).
FX, FY, CX, CY = 1395.749023, 1395.749268, 935.732544, 540.681030
FULL_SIZE = (1080, 1920)
# The reference's preprocessing saved its 480x270 frames with PIL's default JPEG quality (3.3).
PREPROCESS_JPEG_QUALITY = 75


def _read_lines(path: str, what: str) -> List[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except FileNotFoundError:
    raise image_io.MissingFileError(f"{path}: {what} not found") from None


def _action_table(raw_dir: str):
  """actions [name], objects [name], name -> (action index, object index)
  (reference.md §3.1, §6.14)."""
  path = os.path.join(raw_dir, ACTION_FILE)
  lines = _read_lines(path, "action/object table")
  actions, objects, object_index, table = [], [], {}, {}
  for n, line in enumerate(lines[1:], start=2):  # line 1 is the header
    fields = line.split()
    if not fields:
      continue
    # The reference uses the first three of the five columns; the rest are not checked.
    if len(fields) < 3 or not fields[0].isdigit():
      raise ValueError(f"{path}:{n}: expected 'action_id action_name object_name object_pose "
                       f"scenario', got {line!r}")
    action_id, action, obj = int(fields[0]), fields[1], fields[2]
    if action in table:
      raise ValueError(f"{path}:{n}: action {action!r} appears twice")
    # Action index = the row's rank in the file: the reference parses the id column, then
    # renumbers its actions in file order (reference.md §3.1). The two agree on FPHA's own file
    # (ids 1..45 in order); where they do not, the reference's numbering is kept, with a warning.
    if action_id != len(actions) + 1:
      logging.warning("%s:%d: action id %d is not the row's rank %d; the action index follows "
                      "the rows, as the reference's does (%s -> %d)", path, n, action_id,
                      len(actions) + 1, action, len(actions))
    # Object index = order of first appearance reading top-down: the released checkpoints'
    # object head was trained with exactly this numbering (reference.md §6.14).
    if obj not in object_index:
      object_index[obj] = len(objects)
      objects.append(obj)
    table[action] = (len(actions), object_index[obj])
    actions.append(action)
  return actions, objects, table


def load_vocabulary(raw_dir: str) -> Dict[str, List[str]]:
  """{'actions': names by index (file order), 'objects': names by first appearance}."""
  actions, objects, _ = _action_table(raw_dir)
  return {"actions": actions, "objects": objects}


def _split_entries(raw_dir: str, split: str) -> List[Tuple[int, str, str, str]]:
  """(line number, subject, action, seq) of every video of `split`, in file order."""
  if split not in SPLITS:
    raise ValueError(f"unknown FPHA split {split!r}; expected one of {SPLITS}")
  path = os.path.join(raw_dir, SPLIT_FILE)
  lines = _read_lines(path, "split file")
  if not lines or "/" in lines[0].split(" ")[0]:
    # The reference skips line 1 unread; a video there would silently vanish.
    raise ValueError(f"{path}:1: expected the training header line (e.g. 'Training 600'), got "
                     f"{(lines or [''])[0]!r}")
  entries = {"train": [], "test": []}
  current, seen = "train", set()
  for n, line in enumerate(lines[1:], start=2):
    fields = line.split()
    if not fields:
      continue
    if fields[0].startswith("Test"):
      if current == "test":
        raise ValueError(f"{path}:{n}: a second 'Test' header line")
      current = "test"
      continue
    parts = fields[0].split("/")
    if len(fields) != 2 or len(parts) != 3 or not all(parts):
      raise ValueError(f"{path}:{n}: expected 'Subject_k/action_name/seq_idx label', got {line!r}")
    if fields[0] in seen:
      raise ValueError(f"{path}:{n}: video {fields[0]} is listed twice")
    seen.add(fields[0])
    entries[current].append((n, *parts))
  if split == "test" and current != "test":
    raise ValueError(f"{path}: no line starting with 'Test' (the test list's header)")
  if not entries[split]:
    raise ValueError(f"{path}: the {split} list is empty")
  return entries[split]


def _subject_info(raw_dir: str, subject: str) -> Tuple[str, Dict[Tuple[str, str], int]]:
  """Subjects_info/<subject>_info.txt as (path, {(action, seq): num_frames})."""
  path = os.path.join(raw_dir, "Subjects_info", f"{subject}_info.txt")
  counts = {}
  for n, line in enumerate(_read_lines(path, "subject info file")[3:], start=4):  # 3 header lines
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 3 or not fields[2].isdigit():
      raise ValueError(f"{path}:{n}: expected 'action_name seq_idx num_frames', got {line!r}")
    counts[(fields[0], fields[1])] = int(fields[2])
  return path, counts


def _read_skeleton(path: str, num_frames: int) -> np.ndarray:
  """(num_frames, 21, 3) float64 world mm, native joint order, from skeleton.txt rows 0.."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise image_io.MissingFileError(f"{path}: hand pose file not found") from None
  rows = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
  if not rows:
    # The reference would store this video under another key and crash later (reference.md §6.23).
    raise ValueError(f"{path}: empty skeleton file, expected {num_frames} rows")
  if len(rows) < num_frames:
    raise ValueError(f"{path}: {len(rows)} rows, expected {num_frames} (frame count in "
                     f"Subjects_info)")
  values = np.empty((num_frames, 1 + 3 * NUM_JOINTS))
  for row, (n, fields) in enumerate(rows[:num_frames]):
    if len(fields) != values.shape[1]:
      raise ValueError(f"{path}:{n}: {len(fields)} numbers, expected {values.shape[1]} (frame "
                       f"index + 21 joints x 3)")
    try:
      values[row] = [float(v) for v in fields]
    except ValueError:
      raise ValueError(f"{path}:{n}: expected numbers, got {' '.join(fields[:4])} ...") from None
    if not np.isfinite(values[row]).all():
      raise ValueError(f"{path}:{n}: NaN or infinite value")
    if values[row, 0] != row:
      raise ValueError(f"{path}:{n}: frame index {values[row, 0]:g}, expected {row} (frames must "
                       f"be consecutive from 0)")
  return values[:, 1:].reshape(num_frames, NUM_JOINTS, 3)


def camera_joints_mm(world_mm: np.ndarray) -> np.ndarray:
  """(..., 21, 3) world mm (native order) -> reordered colour-camera mm."""
  reordered = world_mm[..., JOINT_ORDER, :]
  return reordered @ CAM_EXTRINSIC[:, :3].T + CAM_EXTRINSIC[:, 3]


def _frame_loader(raw_dir, subject, action, seq, num_frames, image_size):
  """Reads the 480x270 frames, or shrinks the originals when Video_files_480 is absent."""
  rel = os.path.join(subject, action, seq, "color")
  small = os.path.join(raw_dir, "Video_files_480", rel)
  full = os.path.join(raw_dir, "Video_files", rel)
  if os.path.isdir(small):
    return image_io.FrameLoader(os.path.join(small, "color_{frame:04d}.jpeg"), range(num_frames),
                                image_size)
  if os.path.isdir(full):
    return image_io.FrameLoader(os.path.join(full, "color_{frame:04d}.jpeg"), range(num_frames),
                                image_size, file_size=FULL_SIZE, base_resize="pil_bilinear",
                                jpeg_quality=PREPROCESS_JPEG_QUALITY)
  raise image_io.MissingFileError(f"{small}: frame folder not found (nor the originals' {full})")


def iter_videos(raw_dir: str, split: str,
                image_size: Tuple[int, int] = image_io.REFERENCE_SIZE) -> Iterator[Video]:
  """The split's videos in the reference's order (split-file order); images load lazily."""
  image_size = image_io.check_image_size(image_size)
  _, _, table = _action_table(raw_dir)
  split_path = os.path.join(raw_dir, SPLIT_FILE)
  entries = _split_entries(raw_dir, split)
  for n, _, action, _ in entries:  # every name checked before any work
    if action not in table:
      raise ValueError(f"{split_path}:{n}: unknown action {action!r}; expected one of the "
                       f"{len(table)} names in {ACTION_FILE}")
  info = functools.lru_cache(maxsize=None)(lambda subject: _subject_info(raw_dir, subject))
  intrinsics = image_io.scale_intrinsics(FX, FY, CX, CY, FULL_SIZE, image_size)
  full_intrinsics = image_io.scale_intrinsics(FX, FY, CX, CY, FULL_SIZE, FULL_SIZE)
  for n, subject, action, seq in entries:
    video_id = f"{subject}/{action}/{seq}"
    info_path, counts = info(subject)
    if (action, seq) not in counts:
      raise ValueError(f"{info_path}: no line for {action} {seq} ({split_path}:{n} lists "
                       f"{video_id}), so its frame count is unknown")
    num_frames = counts[(action, seq)]
    skeleton = os.path.join(raw_dir, "Hand_pose_annotation_v1", subject, action, seq,
                            "skeleton.txt")
    if num_frames == 0:
      raise ValueError(f"{info_path}: video {video_id} has 0 frames")
    cam_mm = camera_joints_mm(_read_skeleton(skeleton, num_frames))
    if not (cam_mm[..., 2] > 0).all():
      frame = int(np.argwhere(cam_mm[..., 2] <= 0)[0, 0])
      raise ValueError(f"{skeleton}: frame {frame} has a joint at or behind the camera plane")
    # Projected at full resolution, then scaled to the stored size (the reference's x1/4).
    projected = cam_mm @ full_intrinsics.T
    uv_full = projected[..., :2] / projected[..., 2:]
    scale = np.array([image_size[1] / FULL_SIZE[1], image_size[0] / FULL_SIZE[0]])
    action_index, object_index = table[action]
    video = Video(
        video_id=video_id,
        frame_idx=np.arange(num_frames, dtype=np.int64),
        joints3d=(cam_mm / 1000.0).astype(np.float32),
        joints2d=(uv_full * scale).astype(np.float32),
        intrinsics=intrinsics.astype(np.float32),
        hand_valid=np.ones((num_frames, 1), dtype=bool),
        object=np.full((num_frames,), object_index, dtype=np.int32),
        action=action_index,
        load_image=_frame_loader(raw_dir, subject, action, seq, num_frames, image_size),
        image_size=image_size,
        subject=subject)
    video.validate(source=skeleton)
    yield video
