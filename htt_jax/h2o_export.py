"""Submissions for the H2O challenge servers (CodaLab), from evaluation's predictions.npz.

  python scripts/evaluate.py --config=configs/h2o.py --workdir=W --split=test \
      --config.dataset.data_dir=/data/h2o_tfr --h2o_export --h2o_raw_dir=/data/h2o

writes to W/eval/test/h2o/: action_labels.json and action_submission.zip (the JSON at the
archive's root), hand_poses.json and hand_pose_submission.zip (with --h2o_raw_dir).

What the servers expect, and how sure this is:
- Action recognition (codalab.lisn.upsaclay.fr/competitions/4820), `action_labels.json`: one JSON
  object with "modality" (the inputs the method uses) and, for every segment of
  action_labels/action_test.txt, its id (first column, as a string) -> the predicted H2O action
  label, 1..36 in the dataset's numbering (0, background, is never predicted). Source: the
  competition's instructions as quoted in public issues (s-shamil/HandFormer#1,
  oppo-us-research/USST#8: `{"modality": "hand+obj", "1": 32, "2": 11, ..., "242": 22}`, zipped)
  and a public submission writer (wiktormucha/effhandegonet: argmax + 1 per id). Which modality
  strings the server accepts is not public: HTT sees RGB only, so the default is "RGB".
- Hand poses (codalab.lisn.upsaclay.fr/competitions/4822): the file name `hand_poses.json` is
  attested (taeinkwon/h2odataset#11), its layout is not public. ASSUMED: one JSON object keyed by
  each frame's image path as pose_lists/pose_test.txt lists it
  ("subject4/h1/0/cam4/rgb/000000.png"), each value the 128 numbers of the dataset's own
  cam4/hand_pose/<frame>.txt layout (left flag, 21 x (x, y, z) left, right flag, 21 x (x, y, z)
  right; cam4 camera space, metres; H2O's joint order), flags 1 since both hands are always
  predicted, values rounded to 1e-6 m. pose_test.txt lists exactly the frames of
  action_test.txt's segments (23,391 frames, no overlap: checked), which are the frames the test
  clips cover. Should the server want another layout, only `_hand_pose_value` changes.

Which prediction a frame gets: per segment (one H2O "video"), the clip probabilities are summed and
the argmax is the label (the soft vote of metrics.video_accuracy). Evaluation clips are the
reference's shifting windows (starts 0, 1, T*spacing, T*spacing + 1, ...), so every frame of a
segment is a non-padding frame of exactly one clip; padding frames (copies of a clip's last valid
frame) are never used. Were a frame unpadded in several clips, the first clip in split order wins.
"""

import io
import json
import os
import re
import zipfile
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from htt_jax import config_lib, storage

ACTION_FILE = "action_labels.json"
HAND_POSE_FILE = "hand_poses.json"
ACTION_ZIP = "action_submission.zip"
HAND_POSE_ZIP = "hand_pose_submission.zip"
NUM_ACTIONS = 36
NUM_JOINTS = 42  # 0-20 left hand, 21-41 right hand.


def check_config(config, raw_dir: Optional[str] = None, split: str = "test") -> None:
  """ConfigError unless `config` is an H2O one (dataset h2o: 42 joints, 36 actions), and, given
  the raw folder, an error naming its split file unless that reads: what the submissions need,
  checked before evaluation, which would otherwise run the whole split first."""
  if raw_dir:
    from data_pipeline import h2o  # pylint: disable=g-import-not-at-top
    h2o.split_segments(raw_dir, split)
  got = {"config.dataset.name": config.dataset.name,
         "config.model.num_joints": config.model.num_joints,
         "config.model.num_actions": config.model.num_actions}
  want = {"config.dataset.name": "h2o", "config.model.num_joints": NUM_JOINTS,
          "config.model.num_actions": NUM_ACTIONS}
  if got != want:
    raise config_lib.ConfigError(
        "--h2o_export needs an H2O config (configs/h2o.py: "
        + ", ".join(f"{k}={v!r}" for k, v in want.items()) + "), got "
        + ", ".join(f"{k}={v!r}" for k, v in got.items() if v != want[k]))


def segment_id(video_id: str) -> int:
  """'test/0042' (data_pipeline/h2o.py's video ids) -> 42, the id column of the split file."""
  match = re.fullmatch(r"(train|val|test)/(\d+)", str(video_id))
  if not match:
    raise config_lib.ConfigError(
        f"video id {video_id!r} is not an H2O segment id ('<split>/<id>'): were the "
        "predictions made on data prepared with --dataset=h2o?")
  return int(match.group(2))


def action_labels(video_ids: Sequence[str], clip_probs, modality: str = "RGB") -> Dict:
  """{"modality": modality, "<segment id>": H2O action label 1..36, ...}, soft-voted per segment."""
  clip_probs = np.asarray(clip_probs, np.float64)
  if clip_probs.ndim != 2 or clip_probs.shape[1] != NUM_ACTIONS:
    raise config_lib.ConfigError(
        f"action probabilities have shape {clip_probs.shape}, expected (clips, "
        f"{NUM_ACTIONS}): H2O has {NUM_ACTIONS} actions")
  if len(video_ids) != len(clip_probs):
    raise config_lib.ConfigError(f"{len(video_ids)} video ids for {len(clip_probs)} clips")
  sums = {}
  for video, probs in zip(video_ids, clip_probs):
    key = segment_id(video)
    sums[key] = sums.get(key, 0.0) + probs
  out = {"modality": modality}
  out.update({str(k): int(np.argmax(sums[k])) + 1 for k in sorted(sums)})
  return out


def _hand_pose_value(joints: np.ndarray) -> List[float]:
  """(42, 3) metres -> the 128 numbers of an H2O hand_pose file, both hands flagged present."""
  rounded = np.round(np.asarray(joints, np.float64), 6)
  return [1.0] + rounded[:21].ravel().tolist() + [1.0] + rounded[21:].ravel().tolist()


def hand_poses(video_ids: Sequence[str], frame_idx, not_padding, joints3d, segments) -> Dict:
  """{"<path>/cam4/rgb/<frame:06d>.png": 128 numbers} for every frame of every segment.

  video_ids (N,) per clip; frame_idx (N, T) raw frame numbers, not_padding (N, T), joints3d
  (N, T, 42, 3) metres per frame; segments: data_pipeline.h2o.split_segments(raw_dir, split).
  Every frame of every segment must have a prediction, and every prediction a segment.
  """
  frame_idx, not_padding = np.asarray(frame_idx), np.asarray(not_padding)
  joints3d = np.asarray(joints3d)
  if joints3d.shape[:2] != frame_idx.shape or joints3d.shape[2:] != (NUM_JOINTS, 3):
    raise config_lib.ConfigError(
        f"joints3d has shape {joints3d.shape}, expected {frame_idx.shape} + "
        f"({NUM_JOINTS}, 3): H2O predictions have two hands of 21 joints")
  predicted = {}
  for video, frames, keep, joints in zip(video_ids, frame_idx, not_padding > 0.5, joints3d):
    seg = segment_id(video)
    for frame, pose in zip(frames[keep], joints[keep]):
      predicted.setdefault((seg, int(frame)), pose)  # The first clip wins (module docstring).
  by_id = {s.seg_id: s for s in segments}
  unknown = sorted({seg for seg, _ in predicted} - set(by_id))
  if unknown:
    raise config_lib.ConfigError(
        f"predictions for segments {unknown[:5]} that the split file does not list: "
        "is --h2o_raw_dir the dataset the split was prepared from?")
  out = {}
  for s in segments:
    missing = [f for f in range(s.start, s.end + 1) if (s.seg_id, f) not in predicted]
    if missing:
      raise config_lib.ConfigError(
          f"segment {s.seg_id} ({s.path}, frames {s.start}..{s.end}) has no "
          f"prediction for {len(missing)} frame(s), first {missing[:5]}: was the "
          "whole split evaluated?")
    for f in range(s.start, s.end + 1):
      out[f"{s.path}/cam4/rgb/{f:06d}.png"] = _hand_pose_value(predicted[(s.seg_id, f)])
  return out


def _write_json_and_zip(output_dir: str, name: str, zip_name: str, value) -> str:
  """Writes name, then zip_name holding it at the archive's root, each atomically; returns the
  zip's path."""
  text = json.dumps(value)
  storage.write_text(os.path.join(output_dir, name), text)
  archive = os.path.join(output_dir, zip_name)
  with storage.replacing(archive) as temporary:  # a local file, uploaded when output_dir is a URL
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as z:
      z.writestr(name, text)
  return archive


def export(predictions_path: str, output_dir: str, raw_dir: Optional[str] = None,
           split: str = "test", modality: str = "RGB") -> Dict[str, str]:
  """Writes the action submission and, given the raw H2O folder (for its split file's sequence
  paths), the hand pose submission; returns {file name: path} of what was written."""
  with np.load(io.BytesIO(storage.read_bytes(predictions_path))) as npz:
    predictions = {k: npz[k] for k in npz.files}
  video_ids = [str(v) for v in predictions["video_id"]]
  written = {}
  labels = action_labels(video_ids, predictions["action_probs"], modality)
  poses = None
  if raw_dir:  # Everything is computed and checked before the first file is written.
    from data_pipeline import h2o  # pylint: disable=g-import-not-at-top
    segments = h2o.split_segments(raw_dir, split)
    unlabelled = [s.seg_id for s in segments if str(s.seg_id) not in labels]
    if unlabelled:
      raise config_lib.ConfigError(
          f"no prediction for segments {unlabelled[:5]} of the {split} split file: "
          "was the whole split evaluated?")
    missing = [k for k in ("frame_idx", "not_padding", "joints3d") if k not in predictions]
    if missing:
      raise config_lib.ConfigError(
          f"{predictions_path} has no {missing}: evaluate again with this version")
    poses = hand_poses(video_ids, predictions["frame_idx"], predictions["not_padding"],
                       predictions["joints3d"], segments)
  written[ACTION_ZIP] = _write_json_and_zip(output_dir, ACTION_FILE, ACTION_ZIP, labels)
  written[ACTION_FILE] = os.path.join(output_dir, ACTION_FILE)
  if poses is not None:
    written[HAND_POSE_ZIP] = _write_json_and_zip(output_dir, HAND_POSE_FILE, HAND_POSE_ZIP, poses)
    written[HAND_POSE_FILE] = os.path.join(output_dir, HAND_POSE_FILE)
  else:
    # An earlier export's hand poses would sit beside this one's actions as if they belonged
    # together (another checkpoint, another evaluation): this export's folder is its own.
    for name in (HAND_POSE_FILE, HAND_POSE_ZIP):
      path = os.path.join(output_dir, name)
      if storage.exists(path):
        storage.remove(path)
        logging.info("removed %s from an earlier export (no --h2o_raw_dir this time)", path)
  return written
