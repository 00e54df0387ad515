"""H2O challenge submissions (htt_jax/h2o_export.py) from a tiny raw H2O folder in the real layout:
ids and labels of action_labels.json (soft vote per segment), one hand pose per frame of every
test segment keyed by its image path, the ground truth coming back unchanged, and the whole path
through scripts/evaluate.py --h2o_export."""

import functools
import json
import os
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

import raw_layouts as rl
from conftest import ROOT, load_config
from data_pipeline import h2o, writer
from htt_jax import checkpointing, h2o_export
from htt_jax.models import build_model, init_variables

T = 8
# Test segments long enough for several evaluation clips each (starts 0, 1, 16, 17, ...), two in
# one sequence; no labels, as in the public action_test.txt.
SEGMENTS = {
    "train": rl.H2O_SEGMENTS["train"],
    "test": ((1, "subject4/h1/0", None, 0, 39, "480"),    # 6 clips
             (2, "subject4/h1/0", None, 45, 52, "480"),   # 2 clips
             (3, "subject4/k1/1", None, 3, 20, "480")),   # 4 clips
}


@pytest.fixture(scope="module")
def h2o_data(tmp_path_factory):
  raw = rl.write_h2o(tmp_path_factory.mktemp("h2o_raw"), SEGMENTS)
  out = tmp_path_factory.mktemp("h2o_tfr")
  for split in ("train", "test"):
    writer.prepare_split(h2o.iter_videos(str(raw), split, (72, 128)), str(out), split,
                         num_frames=T, window=T, spacing=2, vocabulary=h2o.load_vocabulary(raw),
                         dataset_name="h2o", image_size=(72, 128), progress=False)
  return str(raw), str(out)


def _expected_keys():
  return [f"{path}/cam4/rgb/{f:06d}.png" for _, path, _, start, end, _ in SEGMENTS["test"]
          for f in range(start, end + 1)]


def _probs(peaks):
  """One probability row per (label, mass) list: those masses, the rest spread evenly."""
  rows = []
  for peak in peaks:
    row = np.full(h2o_export.NUM_ACTIONS, (1 - sum(m for _, m in peak)) / (36 - len(peak)))
    for label, mass in peak:
      row[label] = mass
    rows.append(row)
  return np.asarray(rows)


def test_export_of_the_ground_truth_reproduces_the_annotation(h2o_data, tmp_path):
  import data_pipeline  # pylint: disable=g-import-not-at-top
  raw, out = h2o_data
  clips = list(data_pipeline.read_clips(out, "test"))
  video_ids = [c["video_id"] for c in clips]
  assert sorted(set(video_ids)) == ["test/0001", "test/0002", "test/0003"]
  # Segment 1: every clip prefers index 4. Segment 2: 9. Segment 3: one confident clip for 20
  # against three weakly for 30: the soft vote says 20 where a majority vote would say 30.
  peaks = {"test/0001": [[(4, 0.6)]] * 6, "test/0002": [[(9, 0.5)]] * 2,
           "test/0003": [[(20, 0.97)]] + [[(30, 0.3), (20, 0.01)]] * 3}
  assert [video_ids.count(v) for v in sorted(peaks)] == [len(peaks[v]) for v in sorted(peaks)]
  rows = [peaks[v][video_ids[:i].count(v)] for i, v in enumerate(video_ids)]
  np.savez(tmp_path / "predictions.npz", video_id=np.asarray(video_ids),
           action_probs=_probs(rows), frame_idx=np.stack([c["frame_idx"] for c in clips]),
           not_padding=np.stack([c["not_padding"] for c in clips]),
           joints3d=np.stack([c["joints3d"] for c in clips]))

  written = h2o_export.export(str(tmp_path / "predictions.npz"), str(tmp_path / "h2o"), raw,
                              "test", modality="RGB")
  with open(written[h2o_export.ACTION_FILE]) as f:
    labels = json.load(f)
  # H2O's numbering: label = index + 1; keys are the ids of action_test.txt.
  assert labels == {"modality": "RGB", "1": 5, "2": 10, "3": 21}
  with open(written[h2o_export.HAND_POSE_FILE]) as f:
    poses = json.load(f)
  assert list(poses) == _expected_keys()  # Every frame of every segment, once, in file order.
  for key, value in poses.items():
    frame = int(key[-10:-4])
    joints, _ = rl.h2o_pose(frame)
    assert len(value) == 128 and value[0] == value[64] == 1.0
    np.testing.assert_allclose(np.reshape(value[1:64] + value[65:], (42, 3)), joints, atol=2e-6,
                               err_msg=key)
  for archive, name in ((h2o_export.ACTION_ZIP, h2o_export.ACTION_FILE),
                        (h2o_export.HAND_POSE_ZIP, h2o_export.HAND_POSE_FILE)):
    with zipfile.ZipFile(written[archive]) as z:
      assert z.namelist() == [name]  # At the archive's root, as CodaLab wants.

  # A frame the predictions do not cover, or ids that are not H2O's, are errors, and nothing is
  # written then (not even the action submission, which could be).
  longer = rl.write_h2o(tmp_path / "raw_longer", {"test": SEGMENTS["test"][:2] + (
      (3, "subject4/k1/1", None, 3, 21, None),)}, images=False)
  with pytest.raises(ValueError,
                     match=r"segment 3 .* no prediction for 1 frame\(s\), first \[21\]"):
    h2o_export.export(str(tmp_path / "predictions.npz"), str(tmp_path / "h2o2"), str(longer))
  assert not (tmp_path / "h2o2").exists()
  # Exported again without the raw folder: the actions only, and no hand poses of the earlier
  # export left beside them.
  written = h2o_export.export(str(tmp_path / "predictions.npz"), str(tmp_path / "h2o"))
  assert sorted(written) == [h2o_export.ACTION_FILE, h2o_export.ACTION_ZIP]
  assert sorted(os.listdir(tmp_path / "h2o")) == sorted(
      [h2o_export.ACTION_FILE, h2o_export.ACTION_ZIP])
  with pytest.raises(ValueError, match="not an H2O segment id"):
    h2o_export.action_labels(["Subject_1/charge_cell_phone/1"], _probs([[(0, 0.5)]]))


def _random_variables(config):
  """Small random weights of the right shapes, without compiling the initialiser."""
  model = build_model(config)
  shapes = jax.eval_shape(functools.partial(init_variables, model, config=config),
                          jax.random.key(0))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return (np.ones if "var" in name else np.zeros)(leaf.shape, leaf.dtype)
    return rng.normal(0, 0.02, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_evaluate_script_writes_the_submissions(h2o_data, tmp_path):
  raw, out = h2o_data
  overrides = {"dataset.name": "h2o", "dataset.data_dir": out, "model.num_objects": 8,
               "model.num_actions": 36, "model.num_frames": T, "model.window": T,
               "eval_batch_size": 2, "dataset.num_parallel_calls": 1}
  config = load_config("smoke", "h2o")
  for key, value in overrides.items():
    node, name = config, key
    if "." in key:
      head, name = key.split(".")
      node = config[head]
    node[name] = value
  workdir = tmp_path / "run"
  checkpointing.save_variables(str(workdir / "checkpoints"), _random_variables(config))

  command = [sys.executable, str(ROOT / "scripts" / "evaluate.py"),
             f"--config={ROOT / 'configs' / 'smoke.py'}:h2o", f"--workdir={workdir}",
             "--split=test", "--h2o_export", f"--h2o_raw_dir={raw}",
             *(f"--config.{k}={v}" for k, v in overrides.items())]
  run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-4000:]

  h2o_dir = workdir / "eval" / "test" / "h2o"
  with open(h2o_dir / h2o_export.ACTION_FILE) as f:
    labels = json.load(f)
  assert labels.pop("modality") == "RGB"
  assert sorted(labels) == ["1", "2", "3"]
  assert all(isinstance(v, int) and 1 <= v <= 36 for v in labels.values()), labels
  with open(h2o_dir / h2o_export.HAND_POSE_FILE) as f:
    poses = json.load(f)
  assert list(poses) == _expected_keys()
  values = np.asarray(list(poses.values()))
  assert values.shape == (len(poses), 128) and np.isfinite(values).all()
  assert (values[:, [0, 64]] == 1).all()
  # The same per-frame predictions as predictions.npz's unpadded frames.
  with np.load(workdir / "eval" / "test" / "predictions.npz") as npz:
    assert npz["frame_idx"].shape == npz["not_padding"].shape == (12, T)
    assert npz["joints3d"].shape == (12, T, 42, 3)
    first = npz["joints3d"][0][0]  # Segment 1, frame 0.
  np.testing.assert_allclose(np.reshape(poses[_expected_keys()[0]][1:64] +
                                        poses[_expected_keys()[0]][65:], (42, 3)), first,
                             atol=1e-6)
  with open(workdir / "eval" / "test" / "metrics.json") as f:
    assert "left_mepe_mm" in json.load(f)


def test_export_needs_an_h2o_config_and_says_so_before_evaluating(tmp_path):
  h2o_export.check_config(load_config("h2o"))
  with pytest.raises(ValueError, match=r"^--h2o_export needs an H2O config \(configs/h2o\.py: "
                     r"config\.dataset\.name='h2o', config\.model\.num_joints=42, "
                     r"config\.model\.num_actions=36\), got config\.dataset\.name='synthetic', "
                     r"config\.model\.num_joints=21, config\.model\.num_actions=16$"):
    h2o_export.check_config(load_config("smoke"))
  # The script stops before restoring or evaluating anything: no checkpoint or data is needed.
  workdir = tmp_path / "run"
  run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"),
                        "--config=configs/smoke.py", f"--workdir={workdir}", "--split=test",
                        f"--config.dataset.data_dir={tmp_path}", "--h2o_export"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert run.returncode == 1, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(
      "error: --h2o_export needs an H2O config"), run.stderr[-3000:]
  assert not workdir.exists()
  # So is a raw folder without the split's file, which the hand poses need.
  missing = tmp_path / "no_raw" / "action_labels" / "action_val.txt"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    h2o_export.check_config(load_config("h2o"), str(tmp_path / "no_raw"), "val")
  run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"),
                        "--config=configs/h2o.py", f"--workdir={workdir}", "--split=val",
                        f"--config.dataset.data_dir={tmp_path}", "--h2o_export",
                        f"--h2o_raw_dir={tmp_path / 'no_raw'}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert run.returncode == 1, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {missing}"), run.stderr[-3000:]
  assert not workdir.exists()
  # The raw folder is read with open(): a URL is refused by name (docs/launch.md), not reported as
  # a missing split file.
  run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"),
                        "--config=configs/h2o.py", f"--workdir={workdir}", "--split=val",
                        f"--config.dataset.data_dir={tmp_path}", "--h2o_export",
                        "--h2o_raw_dir=gs://bucket/h2o"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert run.returncode == 1, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(
      "error: --h2o_raw_dir=gs://bucket/h2o must be a local folder"), run.stderr[-3000:]
  assert not workdir.exists()
