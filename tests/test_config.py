"""Config validation names the offending key; command-line overrides are type-checked."""

import subprocess
import sys

import pytest

from conftest import ROOT, load_config
from htt_jax import config_lib


@pytest.mark.parametrize("name", ["fpha", "h2o", "smoke", "synthetic"])
def test_shipped_configs_are_valid(name):
  config_lib.validate_config(load_config(name), num_devices=1)


def test_paper_settings():
  config = load_config("fpha")
  assert (config.model.num_frames, config.model.window, config.dataset.image_size) == (128, 16, (270, 480))
  assert (config.learning_rate, config.lr_decay_epochs, config.lr_decay_factor, config.num_epochs) == (3e-5, 15, 0.5, 45)
  assert (config.loss.lambda_hand_2d, config.loss.lambda_hand_z, config.loss.lambda_object) == (1.0, 100.0, 1.0)
  h2o = load_config("h2o")
  assert (h2o.model.num_joints, h2o.model.num_objects, h2o.model.num_actions) == (42, 8, 36)


@pytest.mark.parametrize("key, value, message", [
    ("model.window", 24, "config.model.num_frames (T=32) must be a multiple of config.model.window (t=24)"),
    ("dataset.image_size", (24, 128), "config.dataset.image_size=(24, 128)"),
    ("dataset.name", "epic", "config.dataset.name='epic'"),
    ("dtype", "float16", "config.dtype='float16'"),
    ("parallelism", "pjit", "config.parallelism"),
    ("loss_normalization", "video", "config.loss_normalization"),
    ("batch_size", 0, "config.batch_size=0"),
    ("model.num_heads", 5, "config.model.num_heads=5"),
    ("num_train_steps", 0, "config.num_train_steps=0"),
    ("lr_schedule", "linear", "config.lr_schedule='linear'"),
    ("lr_warmup_steps", -1, "config.lr_warmup_steps=-1"),
    ("grad_clip_norm", -1.0, "config.grad_clip_norm=-1.0 must be a number >= 0"),
    ("eval_split", "eval/test", "config.eval_split='eval/test' must be a split name"),
    ("tensorboard", None, "config.tensorboard=None must be True or False"),
    # Orbax would keep no checkpoint at all (0) or refuse with a traceback (< 0).
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 must be an integer >= 1"),
    ("keep_checkpoints", -1, "config.keep_checkpoints=-1 must be an integer >= 1"),
    # tf.data's limits, otherwise reached only after the model is built.
    ("dataset.prefetch", -5, "config.dataset.prefetch=-5 must be an integer >= 0"),
    ("dataset.shuffle_buffer", 0, "config.dataset.shuffle_buffer=0 must be an integer >= 1"),
    ("dataset.cycle_length", 0, "config.dataset.cycle_length=0 must be an integer >= 1"),
    ("dataset.num_parallel_calls", 0, "config.dataset.num_parallel_calls=0 must be an integer >= 1"),
    ("dataset.augment.brightness", -2.0, "config.dataset.augment.brightness=-2.0 must be a number >= 0"),
    ("dataset.augment.hue", 0.7, "config.dataset.augment.hue=0.7 must be in [0, 0.5]"),
])
def test_invalid_values_name_the_key(smoke_config, key, value, message):
  config = smoke_config.copy_and_resolve_references()
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate_config(config)
  assert message in str(error.value)


def test_epochs_must_be_positive_when_they_set_the_length(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.num_epochs = 0
  config_lib.validate_config(config)  # num_train_steps decides: the epochs are not used
  config.num_train_steps = -1
  with pytest.raises(config_lib.ConfigError, match="config.num_epochs=0 must be a positive number"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("name, known", [("fpha", "runlocal"), ("h2o", "runlocal"),
                                         ("synthetic", "runlocal"), ("benchmark", "runlocal"),
                                         ("smoke", "h2o")])
def test_a_misspelt_config_argument_is_refused(name, known):
  assert load_config(name, known) != load_config(name)  # the variant does change the config
  with pytest.raises(ValueError, match=rf"configs/{name}.py: unknown argument 'runlokal' after ':' "
                                       rf"\(known: \['{known}'\]\)"):
    load_config(name, "runlokal")


def test_runs_evaluate_after_training_where_the_demo_and_paper_configs_say():
  # Labelled held-out splits: FPHA has no val; H2O's public test has no labels.
  assert {name: load_config(name).eval_split for name in ("fpha", "h2o", "synthetic", "smoke")} == \
      {"fpha": "test", "h2o": "val", "synthetic": "test", "smoke": ""}


def test_batch_must_divide_over_devices(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.batch_size = config.eval_batch_size = 6
  config_lib.validate_config(config, num_devices=3)
  with pytest.raises(config_lib.ConfigError, match=r"config.batch_size=6 must be divisible by the number of devices \(4\)"):
    config_lib.validate_config(config, num_devices=4)


def test_dataset_heads_must_match():
  config = load_config("fpha")
  config.model.num_joints = 42
  with pytest.raises(config_lib.ConfigError, match="config.dataset.name='fpha', which needs \\(21, 26, 45\\)"):
    config_lib.validate_config(config)


def test_command_line_overrides_are_type_checked(tmp_path):
  """`--config.k=v` through config_flags, as every script takes them."""
  script = tmp_path / "show.py"
  script.write_text(
      "from absl import app\n"
      "from ml_collections import config_flags\n"
      "from htt_jax import config_lib\n"
      "C = config_flags.DEFINE_config_file('config', lock_config=True)\n"
      "def main(_):\n"
      "  config_lib.validate_config(C.value)\n"
      "  print('T', C.value.model.num_frames, 'size', tuple(C.value.dataset.image_size), C.value.dtype)\n"
      "app.run(main)\n")
  run = lambda *args: subprocess.run([sys.executable, str(script), *args], capture_output=True,
                                     text=True, cwd=ROOT, timeout=120)
  ok = run("--config=configs/fpha.py", "--config.model.num_frames=64",
           "--config.dataset.image_size=96,160", "--config.dtype=bfloat16")
  assert ok.returncode == 0, ok.stderr
  assert "T 64 size (96, 160) bfloat16" in ok.stdout
  bad_type = run("--config=configs/fpha.py", "--config.model.num_frames=abc")
  assert bad_type.returncode != 0
  bad_key = run("--config=configs/fpha.py", "--config.model.num_frame=64")
  assert bad_key.returncode != 0 and "num_frame" in bad_key.stderr
  invalid = run("--config=configs/fpha.py", "--config.model.num_frames=40")
  assert invalid.returncode != 0 and "config.model.window" in invalid.stderr


def test_config_errors_are_value_errors():
  # Callers that caught ValueError from validate_config keep working.
  assert issubclass(config_lib.ConfigError, ValueError)
