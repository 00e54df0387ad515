"""Tiny raw FPHA and H2O folders in the real layouts (reference.md §3.1, §3.2), for source tests.

Every value is a simple function of the frame number, so a test can recompute what a source must
serve without using the source's code: joints from `fpha_world_mm` / `h2o_pose`, image colours from
`frame_colour`. `write_fpha` / `write_h2o` return the root folder.
"""

import os
import pathlib

import numpy as np
from PIL import Image

# FPHA action table: objects first appear in the order juice_bottle, charger, glasses, coin.
FPHA_ACTIONS = ((1, "open_juice_bottle", "juice_bottle"), (2, "charge_cell_phone", "charger"),
                (3, "close_juice_bottle", "juice_bottle"), (4, "clean_glasses", "glasses"),
                (5, "give_coin", "coin"))
# (split, subject, action, seq, frames, images): images '480' (480x270 JPEGs), 'full' (1920x1080
# originals only) or None (no image folder).
FPHA_VIDEOS = (("train", "Subject_1", "charge_cell_phone", "1", 40, "480"),
               ("train", "Subject_2", "open_juice_bottle", "2", 37, "480"),
               ("test", "Subject_1", "clean_glasses", "1", 3, "full"))

# H2O segments per split: (id, path, label or None, start, end, images '480' | 'full' | None).
H2O_SEGMENTS = {
    "train": ((1, "subject1/h1/0", 17, 5, 44, "480"),      # open lotion, 40 frames
              (2, "subject1/h1/0", 23, 50, 86, "480")),    # pour milk, 37 frames
    "val": ((1, "subject2/k1/3", 33, 0, 4, "480"),),       # read book
    "test": ((1, "subject3/o1/1", None, 10, 12, "full"),),  # public test file: no labels
}


def frame_colour(frame: int):
  """The constant RGB colour of frame `frame`'s image."""
  return (3 * frame % 256, 255 - frame % 256, 90)


def _write_image(path, size_hw, frame, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new("RGB", (size_hw[1], size_hw[0]), frame_colour(frame))
  image.save(path, **({"quality": 95} if fmt == "jpeg" else {"compress_level": 1}))


def fpha_world_mm(frame: int) -> np.ndarray:
  """(21, 3) world joints in mm, FPHA native order, of `frame` (the same in every video)."""
  j = np.arange(21, dtype=np.float64)
  return np.stack([-40 + 4 * j + 0.5 * frame, 20 - 3 * j + 0.25 * frame,
                   450 + 2 * j + frame], axis=-1)


def fpha_skeleton_line(frame: int, index=None) -> str:
  values = [frame if index is None else index] + fpha_world_mm(frame).ravel().tolist()
  return " ".join(f"{v:.6f}" for v in values)


def write_fpha(root, videos=FPHA_VIDEOS, images=True) -> pathlib.Path:
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  (root / "action_object_info.txt").write_text(
      "action_id action_name object_name object_pose scenario\n"
      + "".join(f"{i} {a} {o} 1 kitchen\n" for i, a, o in FPHA_ACTIONS))
  lines = {"train": [], "test": []}
  infos = {}
  for split, subject, action, seq, frames, image_kind in videos:
    lines[split].append(f"{subject}/{action}/{seq} 0\n")
    infos.setdefault(subject, []).append(f"{action} {seq} {frames}\n")
    skeleton = root / "Hand_pose_annotation_v1" / subject / action / seq / "skeleton.txt"
    skeleton.parent.mkdir(parents=True, exist_ok=True)
    skeleton.write_text("".join(fpha_skeleton_line(f) + "\n" for f in range(frames)))
    if images and image_kind:
      folder, size = (("Video_files_480", (270, 480)) if image_kind == "480"
                      else ("Video_files", (1080, 1920)))
      for f in range(frames):
        _write_image(root / folder / subject / action / seq / "color" / f"color_{f:04d}.jpeg",
                     size, f, "jpeg")
  (root / "data_split_action_recognition.txt").write_text(
      f"Training {len(lines['train'])}\n" + "".join(lines["train"])
      + f"Test {len(lines['test'])}\n" + "".join(lines["test"]))
  for subject, rows in infos.items():
    path = root / "Subjects_info" / f"{subject}_info.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{subject}\nsome header\nAction Sequence Frames\n" + "".join(rows))
  return root


def h2o_left_valid(frame: int) -> bool:
  """Frames ending in 7 have an unannotated left hand (flag 0, zeros)."""
  return frame % 10 != 7


def h2o_pose(frame: int):
  """(42, 3) metres camera space [left 0-20, right 21-41] and (left, right) flags of `frame`."""
  j = np.arange(21, dtype=np.float64)
  left = np.stack([-0.1 + 0.01 * j + 0.001 * frame, 0.05 - 0.002 * j,
                   0.5 + 0.003 * j + 0.001 * frame], axis=-1)
  right = left + np.array([0.2, 0.01, 0.02])
  flags = (h2o_left_valid(frame), True)
  if not flags[0]:
    left = np.zeros_like(left)
  return np.concatenate([left, right]), flags


def h2o_pose_line(frame: int) -> str:
  joints, (lv, rv) = h2o_pose(frame)
  values = [float(lv)] + joints[:21].ravel().tolist() + [float(rv)] + joints[21:].ravel().tolist()
  return " ".join(f"{v:.8f}" for v in values)


def write_h2o(root, segments=None, images=True) -> pathlib.Path:
  root = pathlib.Path(root)
  segments = H2O_SEGMENTS if segments is None else segments
  (root / "action_labels").mkdir(parents=True, exist_ok=True)
  for split, rows in segments.items():
    if split == "test":
      header = "id path start_act end_act start_frame end_frame\n"
      body = "".join(f"{i} {p} {s} {e} {s} {e + 3}\n" for i, p, _, s, e, _ in rows)
    else:
      header = "id path action_label start_act end_act start_frame end_frame\n"
      body = "".join(f"{i} {p} {lab} {s} {e} {max(s - 2, 0)} {e + 3}\n"
                     for i, p, lab, s, e, _ in rows)
    (root / "action_labels" / f"action_{split}.txt").write_text(header + body)
    for _, rel, _, start, end, image_kind in rows:
      cam = root / rel / "cam4"
      (cam / "hand_pose").mkdir(parents=True, exist_ok=True)
      for f in range(start, end + 1):
        (cam / "hand_pose" / f"{f:06d}.txt").write_text(h2o_pose_line(f) + "\n")
        if images and image_kind:
          folder, size = ("rgb480_270", (270, 480)) if image_kind == "480" else ("rgb", (720, 1280))
          _write_image(cam / folder / f"{f:06d}.png", size, f, "png")
  return root
