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
    ("grad_clip_norm", -1.0, "config.grad_clip_norm=-1.0 must be a finite number >= 0"),
    # NaN passes `< 0` and `<= 0`: each of these was accepted, and failed (or ran wrong) later.
    ("grad_clip_norm", float("nan"), "config.grad_clip_norm=nan must be a finite number >= 0"),
    ("learning_rate", float("nan"), "config.learning_rate=nan must be a finite positive number"),
    ("learning_rate", float("inf"), "config.learning_rate=inf must be a finite positive number"),
    ("learning_rate", 0.0, "config.learning_rate=0.0 must be a finite positive number"),
    ("adam_b1", 1.5, "config.adam_b1=1.5 must be in [0, 1)"),
    ("adam_b1", float("nan"), "config.adam_b1=nan must be in [0, 1)"),
    ("adam_b2", 1.0, "config.adam_b2=1.0 must be in [0, 1)"),
    ("adam_eps", -1.0, "config.adam_eps=-1.0 must be a finite positive number"),
    ("adam_eps", 0.0, "config.adam_eps=0.0 must be a finite positive number"),
    ("lr_decay_epochs", 0, "config.lr_decay_epochs=0 must be a finite positive number"),
    ("lr_decay_epochs", -3, "config.lr_decay_epochs=-3 must be a finite positive number"),
    ("lr_decay_factor", -1.0, "config.lr_decay_factor=-1.0 must be in (0, 1]"),
    ("lr_decay_factor", 0.0, "config.lr_decay_factor=0.0 must be in (0, 1]"),
    ("lr_decay_factor", 2.0, "config.lr_decay_factor=2.0 must be in (0, 1]"),
    ("lr_decay_factor", float("nan"), "config.lr_decay_factor=nan must be in (0, 1]"),
    ("loss.lambda_hand_z", float("nan"), "config.loss.lambda_hand_z=nan must be a finite number >= 0"),
    ("loss.lambda_hand_2d", float("inf"), "config.loss.lambda_hand_2d=inf must be a finite number >= 0"),
    ("loss.lambda_object", float("-inf"), "config.loss.lambda_object=-inf must be a finite number >= 0"),
    ("loss.lambda_action", -1.0, "config.loss.lambda_action=-1.0 must be a finite number >= 0"),
    ("model.batch_norm_momentum", float("nan"), "config.model.batch_norm_momentum=nan must be in [0, 1)"),
    # jax.random.key takes an int64 (2**63 was an OverflowError after checkpoints/ was made), and
    # seed + 1 seeds the calibration batch.
    ("seed", 2**63, "config.seed=9223372036854775808 must be an integer in [0, 2**63 - 1)"),
    ("seed", 2**63 - 1, "config.seed=9223372036854775807 must be an integer"),
    ("seed", -1, "config.seed=-1 must be an integer in [0, 2**63 - 1)"),
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
    ("dataset.augment.brightness", -2.0, "config.dataset.augment.brightness=-2.0 must be a finite number >= 0"),
    ("dataset.augment.brightness", float("nan"), "config.dataset.augment.brightness=nan must be a finite number >= 0"),
    ("dataset.augment.contrast", float("inf"), "config.dataset.augment.contrast=inf must be a finite number >= 0"),
    ("dataset.augment.saturation", float("nan"), "config.dataset.augment.saturation=nan must be a finite number >= 0"),
    ("dataset.augment.hue", 0.7, "config.dataset.augment.hue=0.7 must be in [0, 0.5]"),
    ("dataset.augment.hue", float("nan"), "config.dataset.augment.hue=nan must be in [0, 0.5]"),
    ("dataset.augment.hue", None, "config.dataset.augment.hue=None must be in [0, 0.5]"),
    # An infinite radius was an OverflowError while tracing; a huge finite one only adds taps.
    ("dataset.augment.blur_radius", float("inf"), "config.dataset.augment.blur_radius=inf must be in [0, "),
    ("dataset.augment.blur_radius", 1e200, "config.dataset.augment.blur_radius=1e+200 must be in [0, "),
    ("dataset.augment.blur_radius", -0.5, "config.dataset.augment.blur_radius=-0.5 must be in [0, "),
    ("dataset.augment.center_jittering", 1.5, "config.dataset.augment.center_jittering=1.5 must be in [0, 1]"),
    ("dataset.augment.center_jittering", float("nan"), "config.dataset.augment.center_jittering=nan must be in [0, 1]"),
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
  with pytest.raises(config_lib.ConfigError, match="config.num_epochs=0 must be a finite positive number"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("key, value", [
    ("adam_b1", 0.0), ("adam_b2", 0.999), ("adam_b2", 0.0), ("adam_eps", 1e-12),
    ("lr_decay_factor", 1.0), ("lr_decay_epochs", 1), ("learning_rate", 1e-9),
    ("grad_clip_norm", 0.0), ("grad_clip_norm", 1.0), ("model.batch_norm_momentum", 0.0),
    ("loss.lambda_hand_2d", 0.0), ("loss.lambda_hand_z", 0.0), ("loss.lambda_object", 0.0),
    ("loss.lambda_action", 0.0), ("dataset.augment.brightness", 0.0),
    ("dataset.augment.brightness", 3.0), ("dataset.augment.hue", 0.5),
    ("dataset.augment.center_jittering", 1.0), ("dataset.augment.blur_radius", 0.0),
    ("dataset.augment.blur_radius", 2.5),
    # Valid int64 keys for jax.random.key (and seed + 1 for the calibration batch).
    ("seed", 0), ("seed", 2**63 - 2),
])
def test_edge_values_that_train_are_accepted(smoke_config, key, value):
  config = smoke_config.copy_and_resolve_references()
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  config_lib.validate_config(config)


def test_the_blur_radius_is_at_most_the_longer_image_side(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.dataset.augment.blur_radius = float(max(config.dataset.image_size))
  config_lib.validate_config(config)
  config.dataset.augment.blur_radius += 1
  with pytest.raises(config_lib.ConfigError, match=r"config.dataset.augment.blur_radius=\S+ must be "
                                                   r"in \[0, \d+\] \(pixels, at most the longer side "
                                                   r"of config.dataset.image_size; 0: off\)"):
    config_lib.validate_config(config)


def test_fault_campaign_refuses_a_negative_seed_before_rendering_data(tmp_path):
  from htt_jax import fault_campaign  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match=r"seed -1 \(an integer >= 0\)"):
    fault_campaign.run_campaign(str(tmp_path / "w"), trials=1, seed=-1, steps=4, every=2,
                                log=lambda _: None)
  assert not (tmp_path / "w").exists()  # neither W nor W/data: numpy refused it after rendering
  # A bucket: the campaign deletes and compares each trial's files on local disk; before, a
  # gs:// workdir made a local folder 'gs:' and wrote a plan into the bucket, then failed.
  with pytest.raises(config_lib.ConfigError, match=r"^fault campaign: --workdir=gs://b/w must be "
                     "a local folder"):
    fault_campaign.run_campaign("gs://b/w", trials=1, log=lambda _: None)
  with pytest.raises(config_lib.ConfigError, match=r"^fault campaign: data_dir=gs://b/d must be "):
    fault_campaign.run_campaign(str(tmp_path / "w"), trials=1, data_dir="gs://b/d",
                                log=lambda _: None)
  assert not (tmp_path / "w").exists()


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
