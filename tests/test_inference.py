"""Predictor and scripts/predict.py: the npz contract, chunking, losses, bad input."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, random_batch
from htt_jax import checkpointing, config_lib, inference, steps
from htt_jax.models import build_model, init_variables


@pytest.fixture(scope="module")
def setup(smoke_config, tmp_path_factory):
  model = build_model(smoke_config)
  variables = jax.jit(lambda r: init_variables(model, r, smoke_config))(jax.random.key(3))
  ckpt = tmp_path_factory.mktemp("ckpt") / "checkpoints"
  checkpointing.save_variables(str(ckpt), jax.device_get(variables), step=7, metadata={"x": 1})
  batch = random_batch(smoke_config, batch_size=3, valid_frames=[32, 9, 20])
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  clips = {"images": flat(batch["image"]), "intrinsics": flat(batch["intrinsics"]),
           "not_padding": flat(batch["not_padding"]), "joints25d": flat(batch["joints25d"]),
           "joints3d": flat(batch["joints3d"]), "object": flat(batch["object"]),
           "action": np.repeat(batch["action"], smoke_config.model.num_frames)}
  return smoke_config, variables, str(ckpt), batch, clips


def test_predictor_matches_eval_step_and_is_chunking_invariant(setup):
  config, variables, ckpt, batch, clips = setup
  state = steps.TrainState.create(apply_fn=build_model(config).apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"], tx=steps.make_optimizer(config, 1))
  reference = steps.eval_step(state, batch, config=config)
  out2 = inference.Predictor.from_checkpoint(config, ckpt, batch_size=2).predict(clips)
  out1 = inference.Predictor(config, variables, batch_size=1).predict(clips)
  t, j = config.model.num_frames, config.model.num_joints
  assert out2["joints2d"].shape == (3 * t, j, 2) and out2["depth"].shape == (3 * t, j)
  assert out2["joints3d"].shape == (3 * t, j, 3)
  assert out2["object_probs"].shape == (3 * t, config.model.num_objects)
  assert out2["action_probs"].shape == (3, config.model.num_actions)
  for key in ("joints3d", "object_probs"):
    np.testing.assert_allclose(out2[key], np.asarray(reference[key]).reshape(out2[key].shape), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out1[key], out2[key], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out2["action_probs"], reference["action_probs"], rtol=1e-4, atol=1e-6)
  for key in ("loss/joints2d", "loss/depth", "loss/object", "loss/action", "loss/total"):
    np.testing.assert_allclose(out2[key], reference[key], rtol=1e-4, err_msg=key)


def test_predict_script_end_to_end(setup, tmp_path):
  config, _, ckpt, _, clips = setup
  np.savez(tmp_path / "clips.npz", **clips)
  out_path = tmp_path / "out" / "pred.npz"
  run = subprocess.run([sys.executable, "scripts/predict.py", "--config=configs/smoke.py",
                        f"--checkpoint_dir={ckpt}", f"--clips={tmp_path / 'clips.npz'}",
                        f"--output={out_path}"], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with np.load(out_path) as out:
    assert {"joints2d", "depth", "joints3d", "object_probs", "action_probs", "loss/total"} <= set(out.files)
    assert out["action_probs"].shape == (3, config.model.num_actions)
    np.testing.assert_allclose(out["action_probs"].sum(-1), 1.0, rtol=1e-5)
  assert "loss/total:" in run.stdout
  assert not [p for p in (tmp_path / "out").iterdir() if p.name != "pred.npz"]  # no temporary left


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("intrinsics"), "missing array 'intrinsics'"),
    (lambda c: c.update(images=c["images"][:40]), "N=40 frames is not a positive multiple"),
    (lambda c: c.update(images=c["images"][:, :64]), "expected (N, 72, 128, 3)"),
    (lambda c: c.update(images=c["images"].astype(np.float64)), "expected uint8 or float32"),
    (lambda c: c.update(joints3d=np.full_like(c["joints3d"], np.nan)), "'joints3d' contains NaN"),
    (lambda c: c.update(not_padding=c["not_padding"][:-1]), "'not_padding' has shape"),
    (lambda c: c.pop("action"), "labels are all-or-nothing"),
    # Class labels: the losses have no ignored label, so these gave a NaN (or a wrong) loss.
    (lambda c: c.update(action=np.full_like(c["action"], 99)),
     "'action' has 99 at frame 0 (96 frame(s) out of range): expected whole-number class "
     "indices in [0, 16) (config.model.num_actions=16)"),
    (lambda c: c.update(object=np.where(np.arange(96) == 40, 50, c["object"])),
     "'object' has 50 at frame 40 (1 frame(s) out of range): expected whole-number class "
     "indices in [0, 4) (config.model.num_objects=4)"),
    (lambda c: c.update(action=np.full_like(c["action"], -5)), "'action' has -5 at frame 0"),
    (lambda c: c.update(action=np.full_like(c["action"], -1)),
     "'action' has -1 at frame 0 (96 frame(s) out of range): expected whole-number class "
     "indices in [0, 16) (config.model.num_actions=16); for unlabelled clips leave out all four "
     "label arrays (joints25d, joints3d, object, action)"),
    (lambda c: c.update(object=np.full(c["object"].shape, 2.7)),
     "'object' has 2.7 at frame 0: expected whole-number class indices in [0, 4)"),
    (lambda c: c.update(action=c["action"] > 0), "'action' has dtype bool"),
])
def test_bad_input_is_refused_with_a_clear_message(setup, change, message):
  config, _, _, _, clips = setup
  clips = dict(clips)
  change(clips)
  with pytest.raises(ValueError) as error:
    inference.validate_clips(clips, config, source="clips.npz")
  assert message in str(error.value) and "clips.npz" in str(error.value)


def test_whole_number_float_labels_are_accepted(setup):
  config, _, _, _, clips = setup
  clips = dict(clips, object=clips["object"].astype(np.float32),
               action=clips["action"].astype(np.float64))
  inference.validate_clips(clips, config, source="clips.npz")


@pytest.fixture
def no_model(monkeypatch):
  """Fails the test if the model is compiled: these errors must come before."""
  def refuse(*args, **kwargs):
    raise AssertionError("the model was compiled before the checkpoint was checked")
  monkeypatch.setattr(inference.Predictor, "__init__", refuse)


def test_a_checkpoint_of_another_size_is_refused_before_compiling(setup, no_model):
  config, variables, ckpt, _, _ = setup
  other = config.copy_and_resolve_references()
  other.model.hidden_dim = 32
  with pytest.raises(config_lib.ConfigError) as error:
    inference.Predictor.from_checkpoint(other, ckpt)
  message = str(error.value)
  assert message.startswith(f"{ckpt}: the checkpoint's parameters do not match the config "
                            "(config.model: num_joints=21, num_objects=4, num_actions=16, "
                            "hidden_dim=32, "), message
  assert "['action_block']['action_token']: checkpoint (1, 1, 64), config (1, 1, 32)" in message
  assert "more; use the config (and --config.model.* overrides) it was trained" in message
  # With the training config in the metadata, the message names the keys that differ.
  with pytest.raises(config_lib.ConfigError, match=r"its metadata says config\.model\."
                     r"hidden_dim=64: run with those$"):
    checkpointing.check_variables(variables, other, ckpt,
                                  {"config": {"model": dict(config.model.to_dict())}})
  checkpointing.check_variables(variables, config, ckpt)  # The right config passes.


def _predict(clips_path, output, *overrides):
  return subprocess.run([sys.executable, "scripts/predict.py", "--config=configs/smoke.py",
                         f"--clips={clips_path}", f"--output={output}", *overrides],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("case", ["size", "labels", "output_is_a_folder"])
def test_predict_script_errors_are_one_line_and_write_nothing(setup, tmp_path, case):
  _, _, ckpt, _, clips = setup
  clips = dict(clips)
  output = tmp_path / "out" / "pred.npz"
  overrides = [f"--checkpoint_dir={ckpt}"]
  if case == "size":
    overrides.append("--config.model.hidden_dim=32")
    expected = (rf"error: {ckpt}: the checkpoint's parameters do not match the config "
                r".*hidden_dim=32")
  elif case == "labels":
    clips["action"] = np.full_like(clips["action"], 99)
    expected = (rf"error: {tmp_path}/clips\.npz: 'action' has 99 at frame 0 .*expected "
                r"whole-number class indices in \[0, 16\)")
  else:
    output = tmp_path / "out"
    output.mkdir()
    expected = rf"error: --output={output} is a directory: give the path of the \.npz file"
  np.savez(tmp_path / "clips.npz", **clips)
  run = _predict(tmp_path / "clips.npz", output, *overrides)
  assert run.returncode == 1, run.stderr[-3000:]
  assert re.fullmatch(expected + ".*", run.stderr.strip().splitlines()[-1]), run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clips.npz"] + (
      ["out"] if case == "output_is_a_folder" else [])
  if case == "output_is_a_folder":
    assert not list(output.iterdir())


def test_predict_script_refuses_a_corrupt_file(tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  run = subprocess.run([sys.executable, "scripts/predict.py", "--config=configs/smoke.py",
                        f"--checkpoint_dir={tmp_path}", f"--clips={bad}",
                        f"--output={tmp_path / 'o.npz'}"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
  assert run.returncode != 0 and "cannot read --clips" in run.stderr
  assert not (tmp_path / "o.npz").exists()
