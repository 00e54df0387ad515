"""Pose and action metrics against values computed by hand."""

import numpy as np
import pytest

from htt_jax import metrics


# Coordinates on a 1/1024 m lattice keep every subtraction exact, so that zero errors are zero.
A, B = 11 / 1024, 31 / 1024  # ~10.7 mm and ~30.3 mm


def _fpha_case():
  rng = np.random.default_rng(0)
  gt = rng.integers(-100, 100, (3, 21, 3)) / 1024 + [0, 0, 0.5]
  pred = gt.copy()
  pred[0] += [A, 0, 0]  # frame 0: the whole hand shifted by A
  pred[1, 5] += [0, B, 0]  # frame 1: joint 5 off by B
  pred[2] += 1.0  # frame 2: padding, must be ignored
  return pred, gt, np.array([1, 1, 0])


def test_fpha_pose_report_by_hand():
  pred, gt, valid = _fpha_case()
  report = metrics.pose_report(pred, gt, valid, "fpha")
  # Camera space: 20 joints with errors {A, 0}, joint 5 with {A, B}.
  np.testing.assert_allclose(report["mepe_mm"], 1000 * (20 * A / 2 + (A + B) / 2) / 21, rtol=1e-9)
  # Root-aligned: the shift cancels; joints 1..20, only joint 5 of frame 1 is off.
  np.testing.assert_allclose(report["mepe_ra_mm"], 1000 * B / 40, rtol=1e-9)
  # PCK on the 0..80 mm grid (2.5 mm steps): 5 thresholds below A, 8 in [A, B), 20 above.
  thresholds = np.linspace(0, 0.08, 33)
  curve = np.array([10 / 21] * 5 + [20.5 / 21] * 8 + [1.0] * 20)
  np.testing.assert_allclose(report["auc"], np.trapezoid(curve, thresholds) / 0.08, rtol=1e-9)
  curves = metrics.pose_curves(pred, gt, valid, "fpha")
  np.testing.assert_allclose(curves["joints3d"][1], curve)
  ra_thresholds = np.linspace(0, 0.05, 21)
  ra_curve = np.where(ra_thresholds < B, 39 / 40, 1.0)
  np.testing.assert_allclose(curves["joints3d_cent"][1], ra_curve)
  np.testing.assert_allclose(report["auc_ra"], np.trapezoid(ra_curve, ra_thresholds) / 0.05)


def test_h2o_per_hand_with_alignment_and_hand_validity():
  rng = np.random.default_rng(1)
  gt = rng.integers(-100, 100, (2, 42, 3)) / 1024 + [0, 0, 0.5]
  pred = gt.copy()
  pred[0, :21] += [A, 0, 0]  # left hand shifted in frame 0
  pred[0, 21:] += 5.0  # right hand of frame 0 is not annotated: ignored
  pred[1, 21] += [B, 0, 0]  # right wrist off by B in frame 1
  hand_valid = np.array([[1, 0], [1, 1]])
  report = metrics.pose_report(pred, gt, np.ones(2), "h2o", hand_valid=hand_valid)
  assert set(report) == {f"{h}_{m}" for h in ("left", "right")
                         for m in ("mepe_mm", "auc", "mepe_ra_mm", "auc_ra")}
  np.testing.assert_allclose(report["left_mepe_mm"], 1000 * A / 2, rtol=1e-9)
  assert report["left_mepe_ra_mm"] == 0.0
  np.testing.assert_allclose(report["right_mepe_mm"], 1000 * B / 21, rtol=1e-9)
  # Aligning to a wrong wrist moves every other joint by the wrist's error.
  np.testing.assert_allclose(report["right_mepe_ra_mm"], 1000 * B, rtol=1e-9)
  thresholds = np.linspace(0, 0.09, 37)  # the H2O camera-space grid is 0..90 mm
  left_curve = np.where(thresholds < A, 0.5, 1.0)
  np.testing.assert_allclose(report["left_auc"], np.trapezoid(left_curve, thresholds) / 0.09)


def test_video_accuracy_is_a_soft_vote():
  probs = [[0.6, 0.4], [0.55, 0.45], [0.0, 1.0],  # video a: majority says 0, the sum says 1
           [0.9, 0.1],  # video b: wrong
           [0.2, 0.8]]  # video c: right
  videos = ["a", "a", "a", "b", "c"]
  labels = [1, 1, 1, 1, 1]
  assert metrics.video_accuracy(probs, videos, labels) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="video 'a' has clips labelled 1 and 0"):
    metrics.video_accuracy(probs, videos, [1, 0, 1, 1, 1])


def test_object_accuracy_skips_padding():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
  assert metrics.object_accuracy(probs, [0, 1, 0, 1], [1, 1, 1, 0]) == pytest.approx(2 / 3)
