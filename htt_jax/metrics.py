"""The paper's evaluation metrics, as the reference computes them (reference.md §4).

Pose: per joint, the Euclidean error of every valid frame; MEPE = mean error (mm); PCK(th) = fraction
of errors <= th; AUC = trapezoid(PCK, th) / (th_max - th_min); reported numbers are means over joints.
Camera space uses all joints of a hand; root-aligned ('_ra', the reference's '*_cent') subtracts the
wrist from prediction and ground truth separately and excludes the wrist. H2O is evaluated per hand
(joints 0-20 left, 21-41 right), each aligned to its own wrist.
Actions: per video, the softmax vectors of its clips are summed and the argmax is the prediction
(a soft vote, reference.md §6.18); accuracy = correct videos / videos.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

# (start m, end m, number of thresholds) of each evaluator's grid (2.5 mm steps).
GRID_CAMERA = (0.0, 0.08, 33)
GRID_CAMERA_PER_HAND = (0.0, 0.09, 37)  # H2O (its printout says 0-80 mm; the grid is 0-90).
GRID_ROOT_ALIGNED = (0.0, 0.05, 21)
HAND_JOINTS = 21


def _grid(spec) -> np.ndarray:
  start, stop, num = spec
  return np.linspace(start, stop, num)


def pck_curve(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """errors (frames, joints) in metres -> mean over joints of PCK at each threshold."""
  per_joint = (errors[None, :, :] <= thresholds[:, None, None]).mean(axis=1)  # (th, joints)
  return per_joint.mean(axis=1)


def auc(curve: np.ndarray, thresholds: np.ndarray) -> float:
  return float(np.trapezoid(curve, thresholds) / (thresholds[-1] - thresholds[0]))


def _hand_errors(pred: np.ndarray, gt: np.ndarray, root_aligned: bool) -> np.ndarray:
  if root_aligned:
    pred = pred[:, 1:] - pred[:, :1]
    gt = gt[:, 1:] - gt[:, :1]
  return np.linalg.norm(pred - gt, axis=-1)


def pose_curves(pred_joints3d, gt_joints3d, valid, dataset: str,
                hand_valid: Optional[np.ndarray] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray, float]]:
  """{evaluator name: (thresholds m, PCK curve, MEPE m)} with the reference's evaluator names.

  pred/gt (N, J, 3) metres; valid (N,) not_padding (frames with valid > 1e-4 count); hand_valid
  (N, hands) optionally drops frames where a hand has no annotation (H2O).
  """
  pred = np.asarray(pred_joints3d, np.float64)
  gt = np.asarray(gt_joints3d, np.float64)
  valid = np.asarray(valid) > 1e-4
  num_hands = pred.shape[1] // HAND_JOINTS
  if pred.shape != gt.shape or pred.shape[1] % HAND_JOINTS or valid.shape != pred.shape[:1]:
    raise ValueError(f"pose_curves: pred {pred.shape}, gt {gt.shape}, valid {valid.shape}; "
                     f"expected (N, 21 * hands, 3) twice and (N,)")
  if dataset == "h2o" and num_hands != 2:
    raise ValueError(f"pose_curves: dataset 'h2o' needs 42 joints, got {pred.shape[1]}")
  names = ["left_", "right_"] if dataset == "h2o" else [""] * num_hands
  camera_grid = GRID_CAMERA_PER_HAND if dataset == "h2o" else GRID_CAMERA
  curves = {}
  for hand, prefix in enumerate(names):
    keep = valid.copy()
    if hand_valid is not None:
      keep &= np.asarray(hand_valid)[:, hand] > 0
    if not keep.any():
      continue
    joints = slice(hand * HAND_JOINTS, (hand + 1) * HAND_JOINTS)
    p, g = pred[keep, joints], gt[keep, joints]
    for suffix, aligned, grid in (("joints3d", False, camera_grid),
                                  ("joints3d_cent", True, GRID_ROOT_ALIGNED)):
      errors = _hand_errors(p, g, aligned)
      thresholds = _grid(grid)
      curves[prefix + suffix] = (thresholds, pck_curve(errors, thresholds), float(errors.mean()))
  return curves


def pose_report(pred_joints3d, gt_joints3d, valid, dataset: str,
                hand_valid: Optional[np.ndarray] = None) -> Dict[str, float]:
  """mepe_mm, auc, mepe_ra_mm, auc_ra (H2O: each with a left_ and a right_ prefix)."""
  report = {}
  for name, (thresholds, curve, mepe) in pose_curves(pred_joints3d, gt_joints3d, valid, dataset,
                                                     hand_valid).items():
    prefix = name.split("joints3d")[0]
    tag = "_ra" if name.endswith("_cent") else ""
    report[f"{prefix}mepe{tag}_mm"] = 1000.0 * mepe
    report[f"{prefix}auc{tag}"] = auc(curve, thresholds)
  return report


def video_accuracy(clip_probs, clip_video_ids: Sequence, clip_labels) -> float:
  """Soft vote: sum the clips' probability vectors per video, argmax, compare with the label."""
  clip_probs = np.asarray(clip_probs, np.float64)
  clip_labels = np.asarray(clip_labels)
  if len(clip_probs) != len(clip_video_ids) or len(clip_labels) != len(clip_video_ids):
    raise ValueError(f"video_accuracy: {len(clip_probs)} probability rows, "
                     f"{len(clip_video_ids)} video ids, {len(clip_labels)} labels")
  sums, labels = {}, {}
  for probs, video, label in zip(clip_probs, clip_video_ids, clip_labels):
    sums[video] = sums.get(video, 0.0) + probs
    if labels.setdefault(video, int(label)) != int(label):
      raise ValueError(f"video_accuracy: video {video!r} has clips labelled {labels[video]} "
                       f"and {int(label)}")
  if not sums:
    raise ValueError("video_accuracy: no clips")
  correct = [int(np.argmax(sums[v])) == labels[v] for v in sums]
  return float(np.mean(correct))


def object_accuracy(frame_probs, frame_labels, valid) -> float:
  """Per-frame argmax accuracy over frames that are not padding."""
  keep = np.asarray(valid) > 1e-4
  predictions = np.argmax(np.asarray(frame_probs), axis=-1)
  return float(np.mean(predictions[keep] == np.asarray(frame_labels)[keep]))
