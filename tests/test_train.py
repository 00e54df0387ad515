"""The training loop on a tiny synthetic dataset: metrics file, exact resume, NaN tripwire; the
evaluation after it, and evaluate.py's mistakes (one line, nothing written)."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, prepare_tiny_synthetic
from htt_jax import checkpointing, metrics_log, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  return prepare_tiny_synthetic(out, num_frames=32, window=16)


def _config(data_dir, steps):
  config = load_config("smoke")
  config.dataset.data_dir = data_dir
  config.num_train_steps = steps
  config.checkpoint_every_steps = 2
  config.dataset.shuffle_buffer = 8
  config.dataset.num_parallel_calls = 1
  return config


def _log(workdir):
  return metrics_log.read(metrics_log.path_in(str(workdir)))


def test_resume_gives_the_same_run(data_dir, tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  assert "eval" not in train.train_and_evaluate(_config(data_dir, 4), str(straight))
  assert not (straight / "eval").exists()  # smoke's eval_split is '': training only
  train.train_and_evaluate(_config(data_dir, 2), str(resumed))  # stops after step 2
  # What a kill after step 3 was logged, before its checkpoint, while logging step 4 leaves: the
  # rerun drops both lines (metrics_log.repair) and logs steps 3 and 4 again.
  with open(resumed / "train_metrics.jsonl", "a") as f:
    f.write('{"step": 3, "loss": -1.0}\n{"step": 4, "lo')
  train.train_and_evaluate(_config(data_dir, 4), str(resumed))  # resumes at step 3

  log_a, log_b = _log(straight), _log(resumed)
  assert [r["step"] for r in log_a] == [1, 2, 3, 4] and [r["step"] for r in log_b] == [1, 2, 3, 4]
  for a, b in zip(log_a, log_b):
    for key in ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action",
                "loss/joints3d", "learning_rate"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"step {a['step']} {key}")
  assert {"num_devices", "num_processes"} <= set(log_a[0])
  params_a, _ = checkpointing.restore_variables(str(straight / "checkpoints"))
  params_b, _ = checkpointing.restore_variables(str(resumed / "checkpoints"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), params_a, params_b)


def test_parameters_frozen_from_a_step_keep_its_values_also_across_a_resume(data_dir, tmp_path,
                                                                              caplog):
  """config.frozen_params_from_step: the loop compiles the step that trains everything, then at
  the switch the one with the stem frozen; from there the stem keeps its values, and a run resumed
  before the switch crosses it and ends where the straight run does."""
  def config():
    c = _config(data_dir, 4)
    c.frozen_params, c.frozen_params_from_step = r"backbone/(conv1|bn1)/\w+", 2
    c.checkpoint_every_steps, c.keep_checkpoints = 1, 10
    return c

  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  with caplog.at_level("INFO"):
    train.train_and_evaluate(config(), str(straight))
  compiled = [r.getMessage() for r in caplog.records if "compiled the train step" in r.message]
  assert len(compiled) == 2 and "config.frozen_params frozen (from step 3)" in compiled[1], compiled
  by_step = {s: checkpointing.restore_variables(str(straight / "checkpoints"), s)[0]["params"]
             for s in (1, 2, 3, 4)}
  stem = lambda p: (p["backbone"]["conv1"]["kernel"], p["backbone"]["bn1"]["scale"])
  layer4 = lambda p: p["backbone"]["layer4_1"]["conv2"]["kernel"]
  assert not np.array_equal(stem(by_step[1])[0], stem(by_step[2])[0])  # trained until step 2
  for s in (3, 4):
    jax.tree.map(np.testing.assert_array_equal, stem(by_step[s]), stem(by_step[2]))
    assert not np.array_equal(layer4(by_step[s]), layer4(by_step[s - 1]))

  shutil.copytree(straight, resumed)
  for s in (2, 3, 4):  # what a kill after step 1's checkpoint leaves, and the rerun resumes
    shutil.rmtree(resumed / "checkpoints" / str(s))
  train.train_and_evaluate(config(), str(resumed))
  variables, _ = checkpointing.restore_variables(str(resumed / "checkpoints"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6),
               variables["params"], by_step[4])


def test_non_finite_loss_stops_with_the_step_and_term(data_dir, tmp_path):
  config = _config(data_dir, 3)
  config.learning_rate = 1e30  # The first update blows the parameters up.
  with pytest.raises(train.NonFiniteLossError, match=r"step 2: non-finite .*loss/"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  # Nothing was saved from the bad state.
  assert not list((tmp_path / "w" / "checkpoints").glob("[0-9]*"))


def test_evaluate_matches_an_independent_recomputation(data_dir, tmp_path, monkeypatch):
  import data_pipeline  # pylint: disable=g-import-not-at-top
  from htt_jax import evaluate, inference, metrics, parallel  # pylint: disable=g-import-not-at-top
  forwards = []

  class Recorded(parallel.Forward):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      forwards.append(self)

  monkeypatch.setattr(parallel, "Forward", Recorded)
  config = _config(data_dir, 2)
  config.eval_batch_size = 3  # Does not divide the clip count: the last batch is padded.
  config.eval_split = "train"  # train_and_evaluate evaluates it after training.
  workdir = tmp_path / "run"
  report = train.train_and_evaluate(config, str(workdir))["eval"]
  assert len(forwards) == 1  # evaluation ran the one parallel forward
  out_dir = workdir / "eval" / "train"
  with open(out_dir / "metrics.json") as f:
    assert json.load(f) == pytest.approx(report)
  assert report["checkpoint_step"] == 2
  for name in ("joints3d", "joints3d_cent"):
    with np.load(out_dir / f"{name}.npz") as curve:
      assert curve["x"][-1] == pytest.approx(8.0 if name == "joints3d" else 5.0)  # cm
      assert curve["y"].shape == curve["x"].shape
    assert (out_dir / f"{name}.png").stat().st_size > 1000

  # The same numbers from read_clips + Predictor + metrics, with no tf.data batching involved.
  clips = list(data_pipeline.read_clips(data_dir, "train"))
  assert report["num_clips"] == len(clips)
  predictor = inference.Predictor.from_checkpoint(config, str(workdir / "checkpoints"))
  cat = lambda k: np.concatenate([c[k] for c in clips])
  pred = predictor.predict({"images": cat("image"), "intrinsics": cat("intrinsics"),
                            "not_padding": cat("not_padding")})
  assert len(forwards) == 2  # and so did Predictor
  # Per clip, evaluation's predictions are Predictor's (the same forward, batched differently).
  with np.load(out_dir / "predictions.npz") as saved:
    np.testing.assert_allclose(saved["action_probs"], pred["action_probs"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["joints3d"].reshape(pred["joints3d"].shape),
                               pred["joints3d"], rtol=1e-4, atol=1e-6)
  accuracy = metrics.video_accuracy(pred["action_probs"], [c["video_id"] for c in clips],
                                    [int(c["action"]) for c in clips])
  assert report["action_accuracy"] == pytest.approx(accuracy)
  pose = metrics.pose_report(pred["joints3d"], cat("joints3d"), cat("not_padding"), "fpha")
  for key, value in pose.items():
    assert report[key] == pytest.approx(value, rel=1e-4), key
  mean_pose = evaluate.mean_training_pose(config)
  assert report["baseline_mean_pose_mepe_mm"] == pytest.approx(metrics.pose_report(
      np.broadcast_to(mean_pose, cat("joints3d").shape), cat("joints3d"), cat("not_padding"),
      "fpha")["mepe_mm"], rel=1e-6)


@pytest.fixture(scope="module")
def random_run(data_dir, tmp_path_factory):
  """A workdir whose checkpoint holds small constant weights of the smoke model (no training)."""
  from htt_jax.models import build_model, init_variables  # pylint: disable=g-import-not-at-top
  config = _config(data_dir, 2)
  shapes = jax.eval_shape(lambda r: init_variables(build_model(config), r, config),
                          jax.random.key(0))
  workdir = tmp_path_factory.mktemp("random_run")
  checkpointing.save_variables(str(workdir / "checkpoints"),
                               jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes),
                               step=1)
  return workdir


def test_failing_evaluations_stop_before_compiling_and_leave_no_folder(data_dir, random_run,
                                                                      monkeypatch):
  from htt_jax import config_lib, evaluate, parallel  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError("the model was compiled before the mistake was found")

  monkeypatch.setattr(parallel, "Forward", refuse)
  ckpt, eval_dir = str(random_run / "checkpoints"), random_run / "eval"
  config = _config(data_dir, 2)
  other = config.copy_and_resolve_references()
  other.model.hidden_dim = 32
  with pytest.raises(config_lib.ConfigError) as error:
    evaluate.evaluate(other, ckpt, str(eval_dir / "train"), "train")
  assert str(error.value).startswith(f"{ckpt}: the checkpoint's parameters do not match the "
                                     "config (config.model: "), error.value
  assert "hidden_dim=32" in str(error.value)
  assert "checkpoint (1, 1, 64), config (1, 1, 32)" in str(error.value)
  with pytest.raises(FileNotFoundError, match=r"split 'nosuch' \(expected .*nosuch\.manifest"):
    evaluate.evaluate(config, ckpt, str(eval_dir / "nosuch"), "nosuch")
  with pytest.raises(FileNotFoundError, match="checkpoint directory .*no_checkpoints"):
    evaluate.evaluate(config, str(random_run / "no_checkpoints"), str(eval_dir / "train"),
                      "train")
  assert sorted(p.name for p in random_run.iterdir()) == ["checkpoints"]
  # An eval/ folder that existed keeps what it held, and nothing is added to it.
  (eval_dir / "train").mkdir(parents=True)
  (eval_dir / "train" / "mine.txt").write_text("x")
  with pytest.raises(config_lib.ConfigError, match="do not match the config"):
    evaluate.evaluate(other, ckpt, str(eval_dir / "train"), "train")
  assert [p.name for p in (eval_dir / "train").iterdir()] == ["mine.txt"]
  shutil.rmtree(eval_dir)


@pytest.mark.parametrize("flag, expected", [
    ("--split=../x", "error: --split='../x' must be a split name such as 'test' or 'val' "
                     "(letters, digits, _)"),
    ("--split=", "error: --split='' must be a split name"),
    ("--config.model.hidden_dim=32", "error: {ckpt}: the checkpoint's parameters do not match "
                                     "the config (config.model: "),
], ids=["path", "empty", "size"])
def test_evaluate_script_errors_are_one_line_and_write_nothing(data_dir, random_run, tmp_path,
                                                              flag, expected):
  workdir = tmp_path / "run"
  shutil.copytree(random_run / "checkpoints", workdir / "checkpoints")
  run = subprocess.run([sys.executable, "scripts/evaluate.py", "--config=configs/smoke.py",
                        f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
                        "--split=train", flag], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
  assert run.returncode == 1, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(expected.format(ckpt=workdir / "checkpoints")), run.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]
