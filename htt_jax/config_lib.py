"""The base configuration every `configs/*.py` starts from, and its validation.

Values are the reference's training defaults (reference.md §2.5) and the paper's settings. Config
files live outside the package (`configs/`), so the shared base lives here where they can import it.
"""

import math
import re

import ml_collections

# Heads per dataset: (joints, objects, actions). reference.md §3.1, §3.2.
DATASET_HEADS = {
    "fpha": (21, 26, 45),
    "h2o": (42, 8, 36),
}
KNOWN_DATASETS = ("fpha", "h2o", "synthetic")
BACKBONE_STRIDE = 32


class ConfigError(ValueError):
  """A mistake of the user's, not a bug: a config key or flag, or a file or folder they name.

  Scripts report it as one `error: ...` line and a non-zero exit, without a traceback
  (htt_jax/cli.py); the message must name the key or file to change.
  """


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 2  # Global clips per step (paper: 2 GPUs x 1 clip).
  config.num_epochs = 45
  config.num_train_steps = -1  # -1: num_epochs x steps per epoch of the training data.
  config.learning_rate = 3e-5
  config.lr_decay_epochs = 15  # StepLR step size, in epochs.
  config.lr_decay_factor = 0.5
  # 'step' (the reference's StepLR, above) | 'warmup_cosine' (linear warm-up over lr_warmup_steps,
  # then cosine decay to 0 at the last step; for short runs from random weights, e.g. the demo).
  config.lr_schedule = "step"
  config.lr_warmup_steps = 0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  # Clip the gradient to this global L2 norm before Adam (0: off, as in the reference).
  config.grad_clip_norm = 0.0
  # Parameters kept at their initial values: a regular expression matched in full against each
  # parameter's path, e.g. r"backbone/(conv1|bn1)/.*" for the stem ('' trains all, as the
  # reference). They get no gradient (their backward pass is not computed) and no Adam state
  # (steps.frozen_mask).
  config.frozen_params = ""
  # > 0: frozen_params train like the rest for this many steps and keep the values they have then
  # (their backward pass stops from step frozen_params_from_step + 1; Adam keeps its state for every
  # parameter). 0: frozen from the start, at their initial values.
  config.frozen_params_from_step = 0
  config.dtype = "float32"  # Compute dtype: 'float32' | 'bfloat16'. Parameters stay float32.
  config.parallelism = "jit"  # 'jit' (mesh) | 'pmap'.
  config.loss_normalization = "clip"  # 'clip' (paper's 2-GPU run) | 'frame' (single device).
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # Keys (comma-separated; a section such as 'loss' covers its keys) that may differ from the
  # config of the run being resumed in workdir/checkpoints; any other change that alters the
  # state's shapes or what is learnt is refused (htt_jax/resume.py lists the keys).
  config.resume_allow_changes = ""
  config.eval_batch_size = 8
  # The split that train_and_evaluate evaluates after training, into workdir/eval/<split>/
  # ('': none; scripts/evaluate.py evaluates any split of a finished run).
  config.eval_split = ""
  # TensorBoard event files in the workdir (process 0; through TensorFlow's file system, so a
  # gs:// workdir is written by TensorFlow's GCS client). False: metrics go to the log and
  # workdir/train_metrics.jsonl only (e.g. a workdir on a GCS emulator, which TensorFlow cannot
  # reach: docs/launch.md).
  config.tensorboard = True

  config.loss = ml_collections.ConfigDict()
  config.loss.pose_loss = "l1"  # 'l1' | 'l2'.
  config.loss.lambda_hand_2d = 1.0
  config.loss.lambda_hand_z = 100.0
  config.loss.lambda_object = 1.0
  config.loss.lambda_action = 1.0

  config.model = ml_collections.ConfigDict()
  config.model.num_frames = 128  # T.
  config.model.window = 16  # t.
  config.model.hidden_dim = 512  # d.
  config.model.num_heads = 8
  config.model.mlp_dim = 2048
  config.model.num_layers_pose = 2
  config.model.num_layers_action = 2
  config.model.num_joints = 21
  config.model.num_objects = 26
  config.model.num_actions = 45
  config.model.remat = False
  # 'frozen': the reference (BatchNorm statistics never change). 'batch': training normalises with
  # the global batch's statistics and keeps running averages (momentum) for evaluation; for
  # training from random weights, where frozen statistics let Adam blow the activations up.
  config.model.batch_norm = "frozen"
  config.model.batch_norm_momentum = 0.9
  # Fold BatchNorm on stored statistics into the convolutions (same parameters and gradients,
  # fewer passes over activations; models/resnet.py). False: the plain form, for comparison.
  config.model.fold_batch_norm = True

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "fpha"
  config.dataset.data_dir = ""
  config.dataset.image_size = (270, 480)  # (H, W).
  config.dataset.spacing = 2
  config.dataset.host_sharding = "files"  # 'files' | 'batch'.
  config.dataset.num_parallel_calls = 4  # tf.data threads (also its private thread pool size).
  config.dataset.prefetch = 2  # Batches prepared ahead.
  # Records in the shuffle buffer: windows of up to T+t-1 frames, still JPEG-encoded.
  config.dataset.shuffle_buffer = 64
  # Shards read at once (up to all of them): shards hold whole videos in split order, so reading
  # few at a time made the clips' order far less mixed than the reference's shuffled epoch
  # (reference.md §6.26). Each open shard costs a read buffer (~256 kB).
  config.dataset.cycle_length = 64
  # The reference's augmentation amounts (reference.md §3.7); 0 disables an op.
  # on_device: the reader only decodes and draws; blur, colour and the shift run in the training
  # step on the accelerator (htt_jax/augment/device.py, the same arithmetic; for fast GPUs/TPUs).
  config.dataset.augment = ml_collections.ConfigDict(dict(
      brightness=0.5, contrast=0.5, saturation=0.5, hue=0.15, blur_radius=0.5,
      center_jittering=0.1, on_device=False))

  config.init = ml_collections.ConfigDict()
  config.init.resnet_checkpoint = ""  # torchvision ResNet-18 ImageNet state_dict (.pth).
  config.init.checkpoint = ""  # Orbax checkpoint to start from (e.g. a converted .pth).
  # Measure the (then frozen) BatchNorm statistics on one training batch before step 1: for
  # training without ImageNet weights only (steps.calibrate_batch_norm).
  config.init.calibrate_batch_norm = False
  # Then shift the last pose layer's bias so the first predictions are that batch's mean pose
  # (steps.calibrate_pose_head): on small images the mean depth is far from the initial output.
  config.init.calibrate_pose_head = False
  return config


def check_variant(arg, known: tuple, source: str):
  """A config file's argument (`--config=F.py:runlocal`) when it is one of `known` or empty;
  otherwise a ValueError naming the file and the known ones (a misspelt variant would silently
  give the full-size config)."""
  if arg not in (None, "") and arg not in known:
    raise ValueError(f"{source}: unknown argument {arg!r} after ':' (known: {list(known)})")
  return arg or None


def parse_options(arg, defaults: dict, source: str) -> dict:
  """The integer options of a config file's argument, e.g. `--config=F.py:hosts=8,clips_per_chip=2`
  (ml_collections passes the text after ':' to get_config): `defaults` updated by them; an unknown
  option names the file and the known ones."""
  options = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in options:
      raise ValueError(f"{source}: unknown option {key!r} (known: {sorted(options)})")
    options[key] = int(value)
  return options


def _value(config, key):
  """config's value at a dotted key, e.g. 'dataset.prefetch'."""
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def _choice(config, key, allowed):
  value = _value(config, key)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not one of {list(allowed)}")


def _is_number(value) -> bool:
  """An int or a finite float. Not a bool (True would pass as 1), and not NaN or +-inf: NaN passes
  every check written as `value <= 0` or `value < 0`, and both reach the compiled step (a NaN
  loss, a learning rate that is NaN at the first decay) or fail in tracing with a traceback."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  return isinstance(value, int) or math.isfinite(value)  # isfinite(10**400) would overflow


def check_number(config, key: str, low, high=None, bounds: str = "[]", note: str = "") -> None:
  """ConfigError naming `key` unless its value is a finite number from `low` to `high` (None: no
  upper bound); `bounds` says which ends are included, e.g. '[)' for [low, high), '(' for > low.
  `note` follows the expected range in the message, e.g. ' (0: off)'."""
  value = _value(config, key)
  ok = _is_number(value) and (value >= low if bounds[0] == "[" else value > low)
  if ok and high is not None:
    ok = value <= high if bounds[1] == "]" else value < high
  if not ok:
    expected = (f"in {bounds[0]}{low}, {high}{bounds[1]}" if high is not None
                else f"a finite number {'>=' if bounds[0] == '[' else '>'} {low}")
    raise ConfigError(f"config.{key}={value!r} must be {expected}{note}")


def _positive(config, key, note: str = ""):
  value = _value(config, key)
  if not _is_number(value) or value <= 0:
    raise ConfigError(f"config.{key}={value!r} must be a finite positive number{note}")


def is_split_name(name) -> bool:
  """A split's name (`config.eval_split`, evaluate.py's --split): it names a manifest and the
  folder eval/<split>/, so letters, digits and _ only (no '/' or '..' to leave eval/)."""
  return isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+", name) is not None


def check_integer_at_least(config, key: str, minimum: int) -> None:
  """ConfigError naming `key` unless its value is an integer >= minimum."""
  value = _value(config, key)
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ConfigError(f"config.{key}={value!r} must be an integer >= {minimum}")


def validate_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the offending key; call before building or compiling anything."""
  _choice(config, "dataset.name", KNOWN_DATASETS)
  _choice(config, "dtype", ("float32", "bfloat16"))
  _choice(config, "parallelism", ("jit", "pmap"))
  _choice(config, "loss_normalization", ("clip", "frame"))
  _choice(config, "loss.pose_loss", ("l1", "l2"))
  _choice(config, "dataset.host_sharding", ("files", "batch"))
  _choice(config, "model.batch_norm", ("frozen", "batch"))
  _choice(config, "lr_schedule", ("step", "warmup_cosine"))
  check_integer_at_least(config, "lr_warmup_steps", 0)
  frozen = config.get("frozen_params", "")
  try:
    if not isinstance(frozen, str):
      raise TypeError("not a string")
    re.compile(frozen)
  except (re.error, TypeError) as e:
    raise ConfigError(f"config.frozen_params={frozen!r} must be a regular expression over "
                      f"parameter paths such as 'backbone/conv1/kernel' ({e})") from None
  from_step = config.get("frozen_params_from_step", 0)
  if not isinstance(from_step, int) or isinstance(from_step, bool) or from_step < 0:
    raise ConfigError(f"config.frozen_params_from_step={from_step!r} must be an integer >= 0")
  if from_step and not frozen:
    raise ConfigError(f"config.frozen_params_from_step={from_step} needs config.frozen_params "
                      "(which parameters to freeze)")
  # jax.random.key and tf.data's keys take an int64 (a larger seed was an OverflowError after the
  # workdir's checkpoints folder was made), seed + 1 seeds the calibration batch's stream
  # (train.py), and numpy's generators (the benchmark's inputs) refuse negative seeds.
  seed = config.seed
  if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63 - 1:
    raise ConfigError(f"config.seed={seed!r} must be an integer in [0, 2**63 - 1) (an int64, "
                      "with room for seed + 1)")
  # The optimiser (steps.make_optimizer): Adam divides by 1 - b**step (0 at b = 1) and by
  # sqrt(v) + eps (0/0 where a gradient is 0, at eps = 0). StepLR multiplies the rate by
  # lr_decay_factor every lr_decay_epochs epochs: 0 epochs would decay at every step (the schedule
  # takes at least one step), a factor > 1 grows the rate, one <= 0 stops or reverses training.
  _positive(config, "learning_rate")
  check_number(config, "adam_b1", 0, 1, "[)")
  check_number(config, "adam_b2", 0, 1, "[)")
  _positive(config, "adam_eps")
  _positive(config, "lr_decay_epochs", note=" (StepLR's step, in epochs)")
  check_number(config, "lr_decay_factor", 0, 1, "(]", note=" (1: no decay)")
  if "grad_clip_norm" in config:
    check_number(config, "grad_clip_norm", 0, note=" (0: no clipping)")
  check_number(config, "model.batch_norm_momentum", 0, 1, "[)")
  # Every loss term's weight: a negative one maximises its term, and NaN only showed as a NaN loss
  # after compiling, in a message that did not name the key.
  for key in sorted(k for k in config.loss if k.startswith("lambda_")):
    check_number(config, f"loss.{key}", 0)
  for key in ("batch_size", "log_every_steps", "checkpoint_every_steps",
              "model.num_frames", "model.window", "model.hidden_dim", "model.num_heads",
              "model.mlp_dim", "model.num_layers_pose", "model.num_layers_action",
              "model.num_joints", "model.num_objects", "model.num_actions", "dataset.spacing",
              "eval_batch_size"):
    _positive(config, key)
  tensorboard = config.get("tensorboard", True)
  if not isinstance(tensorboard, bool):
    raise ConfigError(f"config.tensorboard={tensorboard!r} must be True or False")
  eval_split = config.get("eval_split", "")
  if not (eval_split == "" or is_split_name(eval_split)):
    raise ConfigError(f"config.eval_split={eval_split!r} must be a split name such as 'test' or "
                      "'val', or '' for no evaluation after training")
  steps = config.num_train_steps
  if steps != -1 and (not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0):
    raise ConfigError(f"config.num_train_steps={config.num_train_steps} must be positive, or -1 "
                     "for num_epochs x steps per epoch")
  if config.num_train_steps == -1:
    _positive(config, "num_epochs")
  # Orbax would keep none (0: the run ends with no checkpoint) or refuse with a traceback (< 0).
  check_integer_at_least(config, "keep_checkpoints", 1)
  # tf.data's own limits, checked here so that a mistake is named before the model is built.
  for key in ("dataset.num_parallel_calls", "dataset.shuffle_buffer", "dataset.cycle_length"):
    check_integer_at_least(config, key, 1)
  check_integer_at_least(config, "dataset.prefetch", 0)

  m = config.model
  if m.num_frames % m.window:
    raise ConfigError(f"config.model.num_frames (T={m.num_frames}) must be a multiple of "
                     f"config.model.window (t={m.window})")
  if m.hidden_dim % m.num_heads:
    raise ConfigError(f"config.model.hidden_dim={m.hidden_dim} must be divisible by "
                     f"config.model.num_heads={m.num_heads}")
  if m.hidden_dim % 2:
    raise ConfigError(f"config.model.hidden_dim={m.hidden_dim} must be even (sine/cosine pairs)")

  size = tuple(config.dataset.image_size)
  if len(size) != 2 or any(not isinstance(s, int) or s < BACKBONE_STRIDE for s in size):
    raise ConfigError(f"config.dataset.image_size={size} must be (H, W) with both at least "
                     f"{BACKBONE_STRIDE} px, the ResNet-18 backbone's total stride")

  # The augmentation amounts (htt_jax/augment/params.py), after image_size, which bounds two of
  # them. A colour factor is drawn from [max(0, 1 - a), 1 + a]: any a >= 0 is a factor.
  for key in ("brightness", "contrast", "saturation"):
    check_number(config, f"dataset.augment.{key}", 0, note=" (0: off)")
  check_number(config, "dataset.augment.hue", 0, 0.5,
               note=" (a fraction of the hue circle either way; 0: off)")
  # The shift is trunc(c * width * U[-1, 1)) px per axis: past c = 1 a draw can move the whole
  # image out of the frame (a black clip), and a large c overflows the int32 offset.
  check_number(config, "dataset.augment.center_jittering", 0, 1,
               note=" (a fraction of the image width; 0: off)")
  # A radius in pixels: the blur's kernels have about 2 x radius + 1 taps (unrolled on the device
  # path), past the image's longer side they only add copies of its edge pixels, and a huge radius
  # overflowed in blur_kernels (a traceback while tracing).
  check_number(config, "dataset.augment.blur_radius", 0, max(size),
               note=" (pixels, at most the longer side of config.dataset.image_size; 0: off)")

  name = config.dataset.name
  if name in DATASET_HEADS:
    expected = DATASET_HEADS[name]
    got = (m.num_joints, m.num_objects, m.num_actions)
    if got != expected:
      raise ConfigError(
          f"config.model.(num_joints, num_objects, num_actions)={got} do not match "
          f"config.dataset.name={name!r}, which needs {expected}")

  if num_devices is not None:
    for key in ("batch_size", "eval_batch_size"):
      if config[key] % num_devices:
        raise ConfigError(f"config.{key}={config[key]} must be divisible by the number of devices "
                         f"({num_devices})")
