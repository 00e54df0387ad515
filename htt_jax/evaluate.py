"""Evaluation as the reference's eval.py (reference.md §4): shifting-window clips of a split,
soft-voted action accuracy per video, object accuracy per frame, pose metrics in camera and
root-aligned space (per hand for two-hand data), PCK curves as .npz (x in cm, y) and .png,
and metrics.json.

Outputs go to `<workdir>/eval/<split>/`: metrics.json, <evaluator>.npz and <evaluator>.png for the
reference's evaluator names (joints3d, joints3d_cent; H2O left_/right_ prefixes), predictions.npz
(per clip: video_id, action_probs (n_a,), and per frame frame_idx, not_padding, joints3d (J, 3) m
predicted; what challenge exports need, see h2o_export.py).
"""

import os
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipeline import reader
from htt_jax import checkpointing, config_lib, input_pipeline, metrics, parallel, storage

_PREDICTED = ("joints3d", "object_probs", "action_probs")
_LABELS = ("joints3d", "not_padding", "object", "action", "hand_valid", "valid", "video_index",
           "frame_idx")


def mean_training_pose(config) -> np.ndarray:
  """(J, 3) mean camera-space pose over every stored training frame (annotations only)."""
  input_pipeline.load_manifest(config.dataset.data_dir, "train", config)  # the config check
  return reader.mean_joints3d(config.dataset.data_dir, "train")


def _plot(path: str, name: str, x_cm: np.ndarray, y: np.ndarray, auc: float) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4, 3.2), dpi=100)
  ax.plot(x_cm, y, label=f"{name} (AUC {auc:.3f})")
  ax.set_xlabel("threshold (cm)")
  ax.set_ylabel("3D PCK")
  ax.set_xticks(range(0, int(x_cm[-1]) + 1))
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  storage.save_figure(path, fig)
  plt.close(fig)


def _predict_split(config, variables, split):
  """Per-clip outputs of the whole split, gathered on every process, padding clips dropped.

  The predictions come from `parallel.Forward`, the compiled forward that `inference.Predictor`
  and the benchmark's eval mode run too.
  """
  forward = parallel.Forward(config, keys=_PREDICTED)
  variables = forward.place(variables)
  parts = {k: [] for k in _LABELS + tuple(f"pred_{k}" for k in _PREDICTED)}
  for batch in input_pipeline.eval_batches(config, split):
    local = {k: batch[k] for k in _LABELS}
    local.update({f"pred_{k}": v for k, v in forward(variables, batch).items()})
    # Every process gets every clip: process 0's rows first, as in the global batch.
    gathered = multihost_utils.process_allgather(local, tiled=True) if jax.process_count() > 1 \
        else local
    for k, v in gathered.items():
      parts[k].append(np.asarray(v))
  result = {k: np.concatenate(v) for k, v in parts.items()}
  # Strings cannot be all-gathered: ids come from the manifest, by position in the split, so that
  # every process count gives the same ids (those of the source, e.g. 'test/0042' for H2O).
  ids = input_pipeline.load_manifest(config.dataset.data_dir, split)["videos"]["ids"]
  result["video_id"] = np.asarray([ids[i] for i in result.pop("video_index")])
  valid = result.pop("valid") > 0
  return {k: v[valid] for k, v in result.items()}


def evaluate(config, checkpoint_dir: str, output_dir: str, split: str = "test",
             step: Optional[int] = None) -> dict:
  """Evaluates a checkpoint on a split; writes and returns metrics.json's content."""
  config_lib.validate_config(config)
  # An output folder that cannot be written (a missing bucket), a missing checkpoint or one of
  # another model size, or a missing or mismatched split (the training split too: its mean pose is
  # the baseline) stops here, before anything is compiled. The output folder is only created when
  # the results are written, so a failure leaves no empty eval/<split>/ behind.
  if jax.process_index() == 0:
    storage.check_can_create(output_dir)
  variables, ckpt_metadata = checkpointing.restore_variables(checkpoint_dir, step, config)
  for needed in dict.fromkeys((split, "train")):
    input_pipeline.load_manifest(config.dataset.data_dir, needed, config)
  out = _predict_split(config, variables, split)
  num_clips, t_clip = out["not_padding"].shape
  flat = lambda x: x.reshape((num_clips * t_clip,) + x.shape[2:])
  valid = flat(out["not_padding"])
  hand_valid = flat(out["hand_valid"]) if out["hand_valid"].size else None
  dataset_kind = "h2o" if config.model.num_joints == 42 else "fpha"

  report = {"split": split, "num_clips": int(num_clips),
            "num_videos": int(len(set(out["video_id"]))),
            "checkpoint_step": ckpt_metadata.get("step", step)}
  if (out["action"] >= 0).all():
    report["action_accuracy"] = metrics.video_accuracy(out["pred_action_probs"], out["video_id"],
                                                       out["action"])
    report["object_accuracy"] = metrics.object_accuracy(flat(out["pred_object_probs"]),
                                                        flat(out["object"]), valid)
  else:
    logging.info("split %s has no action labels: accuracy is not computed", split)
  pred3d, gt3d = flat(out["pred_joints3d"]), flat(out["joints3d"])
  report.update(metrics.pose_report(pred3d, gt3d, valid, dataset_kind, hand_valid))
  mean_pose = mean_training_pose(config)
  baseline = metrics.pose_report(np.broadcast_to(mean_pose, gt3d.shape), gt3d, valid,
                                 dataset_kind, hand_valid)
  report.update({f"baseline_mean_pose_{k}": v for k, v in baseline.items() if "mepe" in k})

  if jax.process_index() == 0:
    storage.makedirs(output_dir)
    for name, (thresholds, curve, _) in metrics.pose_curves(pred3d, gt3d, valid, dataset_kind,
                                                            hand_valid).items():
      x_cm = thresholds * 100.0
      storage.save_npz(os.path.join(output_dir, f"{name}.npz"), {"x": x_cm, "y": curve})
      _plot(os.path.join(output_dir, f"{name}.png"), name, x_cm, curve,
            metrics.auc(curve, thresholds))
    storage.save_npz(os.path.join(output_dir, "predictions.npz"), {
        "video_id": out["video_id"], "action_probs": out["pred_action_probs"],
        "frame_idx": out["frame_idx"], "not_padding": out["not_padding"],
        "joints3d": out["pred_joints3d"].astype(np.float32)})
    storage.write_json(os.path.join(output_dir, "metrics.json"), report)
  return report
