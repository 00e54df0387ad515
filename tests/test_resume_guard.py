"""The resume guard: a rerun that would not continue the run in its workdir stops with one
`error:` line naming each key and both values, and changes no file; the escape hatch
(`resume_allow_changes`) continues on purpose; checkpoints none of which restores are an error,
never a fresh start; a torn newest step falls back to the previous one and is moved aside, not
deleted. One trained workdir (4 smoke steps, checkpoints at 2 and 4) is copied per case."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, prepare_tiny_synthetic
from htt_jax import checkpointing, config_lib, metrics_log, models, resume, train
from process_utils import env_for, file_hashes

STEPS = 4
OVERRIDES = {"model.num_frames": 8, "model.window": 8, "num_train_steps": STEPS,
             "log_every_steps": 1, "checkpoint_every_steps": 2, "dataset.num_parallel_calls": 1,
             "dataset.prefetch": 1, "dataset.shuffle_buffer": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("resume_guard_data")
  return prepare_tiny_synthetic(out)


def _config(data_dir, **changes):
  config = load_config("smoke")
  for key, value in {**OVERRIDES, "dataset.data_dir": data_dir, **changes}.items():
    *parents, name = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[name] = value
  return config


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resume_guard_run") / "run"
  train.train_and_evaluate(_config(data_dir), str(workdir))
  assert _steps(workdir) == [2, 4]
  return workdir


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def _copy(trained, tmp_path):
  return shutil.copytree(trained, tmp_path / "run")


def _script(data_dir, workdir, **changes):
  """scripts/train.py on the smoke config; (exit code, the `error:` lines of stderr)."""
  flags = {**OVERRIDES, "dataset.data_dir": data_dir, **changes}
  command = [sys.executable, str(ROOT / "scripts" / "train.py"),
             f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
             *(f"--config.{k}={v}" for k, v in flags.items())]
  done = subprocess.run(command, env=env_for(), cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  return done.returncode, [l for l in done.stderr.splitlines() if l.startswith("error:")]


def test_changed_model_size_is_refused_and_no_file_changes(data_dir, trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = file_hashes(workdir)
  rc, errors = _script(data_dir, workdir, **{"model.hidden_dim": 32})
  assert rc == 1 and len(errors) == 1, errors
  assert "model.hidden_dim: 64 -> 32" in errors[0]
  assert f"checkpoint step 4 in {workdir / 'checkpoints'}" in errors[0]
  assert "--config.resume_allow_changes=model.hidden_dim;" in errors[0]
  assert file_hashes(workdir) == before


def test_changed_batch_size_and_learning_rate_are_each_named(data_dir, trained, tmp_path):
  # In process (the command line's `error:` form is the test above's): the same ConfigError.
  workdir = _copy(trained, tmp_path)
  before = file_hashes(workdir)
  with pytest.raises(config_lib.ConfigError) as error:
    train.train_and_evaluate(_config(data_dir, batch_size=4, learning_rate=2e-4), str(workdir))
  message = str(error.value)
  assert "batch_size: 2 -> 4" in message and "learning_rate: 0.0001 -> 0.0002" in message
  assert "resume_allow_changes=batch_size,learning_rate;" in message
  assert file_hashes(workdir) == before


def test_every_checkpoint_file_truncated_is_an_error_and_nothing_changes(data_dir, trained,
                                                                         tmp_path):
  workdir = _copy(trained, tmp_path)
  for folder, _, files in os.walk(workdir / "checkpoints"):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  before = file_hashes(workdir)
  rc, errors = _script(data_dir, workdir)
  assert rc == 1 and len(errors) == 1, errors
  assert f"no checkpoint in {workdir / 'checkpoints'} can be restored" in errors[0]
  assert "step 4: " in errors[0] and "step 2: " in errors[0]
  assert file_hashes(workdir) == before  # nothing trained, written, moved or deleted


def test_allowed_change_continues_and_the_new_config_is_then_the_run_s(data_dir, trained,
                                                                       tmp_path):
  # The seed (guarded: it orders the data) changes no compiled program, so this costs no
  # compilation; StepLR's num_train_steps may grow without an allowance.
  workdir = _copy(trained, tmp_path)
  changed = {"seed": 7, "num_train_steps": STEPS + 1}
  with pytest.raises(config_lib.ConfigError, match="seed: 0 -> 7"):
    train.train_and_evaluate(_config(data_dir, **changed), str(workdir))
  train.train_and_evaluate(_config(data_dir, resume_allow_changes="seed", **changed),
                           str(workdir))
  logged = metrics_log.read(metrics_log.path_in(str(workdir)))
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
  _, metadata = checkpointing.restore_variables(str(workdir / "checkpoints"))
  assert metadata["step"] == 5 and metadata["config"]["seed"] == 7
  # The newest checkpoint carries the new config: the same rerun needs no allowance any more
  # (and has nothing left to train).
  train.train_and_evaluate(_config(data_dir, **changed), str(workdir))


def test_torn_newest_step_resumes_from_the_previous_one_and_sets_it_aside(data_dir, trained,
                                                                          tmp_path):
  workdir = _copy(trained, tmp_path)
  for folder, _, files in os.walk(workdir / "checkpoints" / "4" / "train"):
    for name in files:  # The optimiser state's arrays of step 4, as a storage fault leaves them.
      path = os.path.join(folder, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(10)
  train.train_and_evaluate(_config(data_dir), str(workdir))
  # Step 4 is trained again from step 2 and saved; the torn one is kept beside it, not deleted.
  assert _steps(workdir) == [2, 4]
  assert (workdir / "checkpoints" / "4.unrestorable" / "train").is_dir()
  resumed, _ = checkpointing.restore_variables(str(workdir / "checkpoints"))
  straight, _ = checkpointing.restore_variables(str(trained / "checkpoints"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), resumed,
               straight)


def test_key_decisions(data_dir):
  old = _config(data_dir)
  stored = resume.config_json(old)

  def changed(key, value, base=None):
    new = _config(data_dir, **{key: value}) if base is None else base
    return [k for k, _, _ in resume.differences(stored, resume.config_json(new),
                                                old_steps_per_epoch=3, new_steps_per_epoch=3)]

  guarded = {"seed": 1, "batch_size": 4, "learning_rate": 1e-3, "adam_b2": 0.99,
             "lr_decay_epochs": 3, "grad_clip_norm": 1.0, "dtype": "bfloat16",
             "frozen_params": "backbone/conv1/kernel",
             "loss_normalization": "frame", "loss.lambda_hand_z": 1.0, "model.hidden_dim": 32,
             "model.num_frames": 16, "model.window": 4, "model.num_actions": 8,
             "model.batch_norm": "batch", "dataset.image_size": (64, 128),
             "dataset.name": "fpha", "dataset.spacing": 1, "dataset.augment.hue": 0.0}
  for key, value in guarded.items():
    assert changed(key, value) == [key], key
  free = {"model.remat": True, "model.fold_batch_norm": False, "parallelism": "pmap",
          "dataset.data_dir": "gs://bucket/data", "dataset.shuffle_buffer": 2,
          "dataset.augment.on_device": True, "log_every_steps": 7, "keep_checkpoints": 1,
          "checkpoint_every_steps": 5, "eval_split": "test", "init.checkpoint": "/elsewhere",
          "num_train_steps": 40}  # StepLR: extending a run is allowed
  for key, value in free.items():
    assert changed(key, value) == [], key
  # Under warmup_cosine the schedule's length is part of every step's learning rate.
  cosine = resume.config_json(_config(data_dir, lr_schedule="warmup_cosine"))
  longer = _config(data_dir, lr_schedule="warmup_cosine", num_train_steps=40)
  assert [k for k, _, _ in resume.differences(cosine, resume.config_json(longer))] == [
      "num_train_steps"]
  # A key the old run's code did not have counts as its default.
  del stored["grad_clip_norm"], stored["frozen_params"]
  assert changed("grad_clip_norm", 0.0) == [] and changed("grad_clip_norm", 1.0) == [
      "grad_clip_norm"]
  assert changed("frozen_params", "") == [] and changed("frozen_params", "backbone/.*") == [
      "frozen_params"]


def test_data_identity_and_unusable_metadata(data_dir):
  from data_pipeline import schema  # pylint: disable=g-import-not-at-top
  config = _config(data_dir)
  manifest = schema.load_manifest(data_dir, "train")
  metadata = {"config": resume.config_json(config), "steps_per_epoch": 3,
              "data": resume.data_identity(manifest)}
  check = lambda md, cfg, data: resume.check_compatible(md, cfg, data, directory="/w/c", step=4)
  # The same data moved elsewhere (other shards, another folder) is the same data.
  moved = dict(manifest, shards=[], bytes=1)
  assert check(metadata, _config(data_dir, **{"dataset.data_dir": "/moved"}),
               resume.data_identity(moved)) == []
  more = dict(manifest, videos={"count": 5, "ids": manifest["videos"]["ids"] + ["extra"]})
  with pytest.raises(config_lib.ConfigError, match=r"data.video_ids_sha256: .*data.videos: 4 -> 5"):
    check(metadata, config, resume.data_identity(more))
  assert [k for k, _, _ in check(metadata, _config(data_dir, resume_allow_changes="data"),
                                 resume.data_identity(more))] == ["data.video_ids_sha256",
                                                                  "data.videos"]
  with pytest.raises(config_lib.ConfigError, match="reference .pth.*init.checkpoint=/w/c"):
    check(dict(metadata, format="reference-pth"), config, None)
  with pytest.raises(config_lib.ConfigError, match="no config in its metadata"):
    check({"step": 4}, config, None)
  assert check({"step": 4}, _config(data_dir, resume_allow_changes="*"), None) == []
  with pytest.raises(config_lib.ConfigError, match="'model.hiden_dim', which is not a config"):
    resume.allowed_changes(_config(data_dir, resume_allow_changes="model.hiden_dim"))


def test_init_checkpoint_loads_variables_of_the_same_model_only(data_dir, trained):
  directory = str(trained / "checkpoints")
  saved, _ = checkpointing.restore_variables(directory)

  def fresh(config):
    return jax.eval_shape(lambda: models.init_variables(models.build_model(config),
                                                        jax.random.key(0), config))

  config = _config(data_dir, **{"init.checkpoint": directory})
  loaded = train.initial_variables(config, fresh(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), jax.device_get(saved))
  other = _config(data_dir, **{"init.checkpoint": directory, "model.mlp_dim": 32})
  with pytest.raises(config_lib.ConfigError,
                     match=r"holds variables of another model \(\d+ differ; \['params'\]"):
    train.initial_variables(other, fresh(other))


def test_init_checkpoint_starts_a_new_run_from_the_weights(data_dir, trained, tmp_path):
  # A new workdir, one step: Adam's first update moves each parameter by at most about the
  # learning rate (1e-4), while the 4 trained steps moved them ~4x as far from the random start.
  directory = str(trained / "checkpoints")
  workdir = tmp_path / "new"
  train.train_and_evaluate(_config(data_dir, num_train_steps=1,
                                   **{"init.checkpoint": directory}), str(workdir))
  after, metadata = checkpointing.restore_variables(str(workdir / "checkpoints"))
  assert metadata["step"] == 1  # step 0 and a new optimiser, not a resume of step 4
  start, _ = checkpointing.restore_variables(directory)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       after["params"], start["params"])
  assert 0 < max(jax.tree.leaves(moved)) <= 1.01e-4, max(jax.tree.leaves(moved))
