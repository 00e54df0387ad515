"""The resume guard: a rerun continues a workdir's run only if its config means the same run.

`train.train_and_evaluate` calls `check_compatible` with the metadata of the checkpoint it is
about to resume from, before it compiles, trains or writes anything. Every key that changes the
state's shapes or what is being learnt must be equal; otherwise a `config_lib.ConfigError` names
each differing key with both values (old -> new), the checkpoint folder, and the two ways to go on
on purpose: `--config.resume_allow_changes=KEY,...` (those keys may differ; the checkpoints saved
from then on carry the new config) or a new workdir started from the checkpoint's weights with
`--config.init.checkpoint=DIR`.

Decisions, key by key (anything not listed here is GUARDED, so a key added later is safe until
someone decides otherwise):

GUARDED (the state's shapes, or the function, data or update rule being optimised):
  seed (the data order and augmentation streams that a resume continues);
  batch_size; learning_rate, lr_schedule, lr_decay_epochs, lr_decay_factor, lr_warmup_steps,
  adam_b1, adam_b2, adam_eps, grad_clip_norm (the optimiser state's meaning, even its tree:
  clipping adds a chain element); frozen_params and frozen_params_from_step (which parameters
  train and until when, and the optimiser state's tree); dtype (the compute dtype: parameters
  are float32 either way, but bfloat16 changes every step's numbers); loss_normalization and
  loss.*; model.* except the two below (sizes, heads, T = model.num_frames, t = model.window,
  batch_norm and its momentum);
  dataset.name, dataset.image_size, dataset.spacing; dataset.augment amounts (brightness,
  contrast, saturation, hue, blur_radius, center_jittering: the training distribution);
  the data itself, compared as `data.*` (`data_identity`: what the training split IS, from its
  manifest: dataset, T, t, spacing, image size and format, joints, hands, number of videos, a
  digest of their ids and of the label vocabulary, training clips, records), never where it is.
GUARDED FOR warmup_cosine ONLY: num_epochs, num_train_steps. The cosine decays to 0 at the last
  step, so a longer run has another learning rate at every step already taken; under the
  reference's StepLR ('step') the rate at step s does not depend on the total, so extending (or
  shortening) a StepLR run is allowed and is the ordinary way to train further.
FREE (the same numbers, or bookkeeping): parallelism (jit and pmap agree, tested), model.remat,
  model.fold_batch_norm (same parameters and gradients), dataset.augment.on_device (the same
  arithmetic on the device); log_every_steps, checkpoint_every_steps, keep_checkpoints,
  eval_batch_size, eval_split, tensorboard, resume_allow_changes; where and how the data is read
  (dataset.data_dir, which may move, e.g. to gs://; num_parallel_calls, prefetch, cycle_length,
  shuffle_buffer, host_sharding: tuning these for another machine changes which clip comes when,
  not what is learnt); init.* (they only shape step 0, which a resume skips); demo_data (how the
  demo's data was rendered: the data is compared through `data.*`).

Checkpoints that cannot be compared: a converted reference `.pth` (metadata `format` =
'reference-pth', no optimiser state) is not a training run, so resuming from it is refused with a
pointer to `init.checkpoint`; metadata without `config` (written by something else) is refused
unless `resume_allow_changes` is '*', which also allows every key.
"""

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from htt_jax import config_lib

ALLOW_KEY = "resume_allow_changes"
ALLOW_ALL = "*"
DATA = "data"  # The prefix of the data identity's keys in messages and in the allow list.

FREE = frozenset({
    "parallelism", "model.remat", "model.fold_batch_norm", "dataset.augment.on_device",
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
    "eval_split", "tensorboard", ALLOW_KEY,
    "dataset.data_dir", "dataset.num_parallel_calls", "dataset.prefetch", "dataset.cycle_length",
    "dataset.shuffle_buffer", "dataset.host_sharding",
})
FREE_SECTIONS = ("init", "demo_data")
LENGTH_KEYS = ("num_epochs", "num_train_steps")  # Guarded under warmup_cosine only.
ABSENT = "<absent>"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_json(config) -> Dict[str, Any]:
  """The config as the checkpoint metadata stores it (JSON: tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def data_identity(manifest: Mapping[str, Any]) -> Dict[str, Any]:
  """What the training split is, from its manifest, independent of where it is stored or how it
  is sharded (stored in the training metadata as `data`)."""
  videos = manifest.get("videos", {})
  return {
      "dataset": manifest.get("dataset"), "num_frames": manifest.get("num_frames"),
      "window": manifest.get("window"), "spacing": manifest.get("spacing"),
      "image_size": list(manifest.get("image_size") or []),
      "image_format": manifest.get("image_format"), "jpeg_quality": manifest.get("jpeg_quality"),
      "num_joints": manifest.get("num_joints"), "num_hands": manifest.get("num_hands"),
      "videos": videos.get("count"), "video_ids_sha256": _digest(sorted(videos.get("ids", []))),
      "vocabulary_sha256": _digest(manifest.get("vocabulary")),
      "train_clips": manifest.get("clips", {}).get("train"), "records": manifest.get("records"),
  }


def allowed_changes(config) -> Tuple[str, ...]:
  """`config.resume_allow_changes` as a tuple of keys; ConfigError naming any that is not a key
  of the config (or `data`, `data.<field>`, or '*')."""
  text = config.get(ALLOW_KEY, "") or ""
  if not isinstance(text, str):
    raise config_lib.ConfigError(f"config.{ALLOW_KEY}={text!r} must be a comma-separated string "
                                 "of config keys")
  keys = tuple(k.strip() for k in text.split(",") if k.strip())
  known = _flatten(config_json(config))
  fields = data_identity({})
  for key in keys:
    if key == ALLOW_ALL or key == DATA or key in known:
      continue
    if key.startswith(DATA + ".") and key[len(DATA) + 1:] in fields:
      continue
    if any(k.startswith(key + ".") for k in known):  # a section: every key under it
      continue
    raise config_lib.ConfigError(
        f"config.{ALLOW_KEY} names {key!r}, which is not a config key (nor '{DATA}', "
        f"'{DATA}.<field>' with a field of {sorted(fields)}, or '{ALLOW_ALL}')")
  return keys


def _is_free(key: str) -> bool:
  return key in FREE or any(key == s or key.startswith(s + ".") for s in FREE_SECTIONS)


def _is_allowed(key: str, allowed: Sequence[str]) -> bool:
  return any(a == ALLOW_ALL or key == a or key.startswith(a + ".") for a in allowed)


def _total_steps(config: Mapping[str, Any], steps_per_epoch: Optional[int]):
  steps = config.get("num_train_steps", -1)
  if steps is not None and steps > 0:
    return steps
  if steps_per_epoch is None:
    return None
  return config.get("num_epochs", 0) * steps_per_epoch


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *,
                old_steps_per_epoch: Optional[int] = None,
                new_steps_per_epoch: Optional[int] = None) -> List[Tuple[str, Any, Any]]:
  """(key, old value, new value) for every guarded key that differs, in key order.

  `old` and `new` are JSON configs (`config_json`), each optionally with the data identity
  under `data`. A key the old run's code did not have yet counts as its default
  (config_lib.base_config), since that code behaved as the default does; keys the new config
  lacks are read by nothing any more and are skipped.
  """
  base = _flatten(json.loads(config_lib.base_config().to_json_best_effort()))
  old_flat, new_flat = _flatten(old), _flatten(new)
  found = []
  for key in sorted(new_flat):
    if _is_free(key) or key in LENGTH_KEYS:
      continue
    before = old_flat.get(key, base.get(key, ABSENT))
    if before != new_flat[key]:
      found.append((key, before, new_flat[key]))
  cosine = "warmup_cosine" in (old.get("lr_schedule"), new.get("lr_schedule"))
  if cosine and (_total_steps(old, old_steps_per_epoch)
                 != _total_steps(new, new_steps_per_epoch)):
    found += [(k, old.get(k, base.get(k, ABSENT)), new.get(k)) for k in LENGTH_KEYS
              if old.get(k, base.get(k, ABSENT)) != new.get(k)]
  return sorted(found)


def check_compatible(metadata: Mapping[str, Any], config, data: Optional[Mapping[str, Any]],
                     *, directory: str, step: int, steps_per_epoch: Optional[int] = None) -> list:
  """Raises ConfigError unless the run whose checkpoint `step` in `directory` wrote `metadata`
  may be continued with `config` (and the training data `data`, a `data_identity`).

  Returns the allowed differences (key, old, new), for the caller to log.
  """
  allowed = allowed_changes(config)
  where = f"checkpoint step {step} in {directory}"
  start_new = (f"to start a new run from its weights, use another --workdir with "
               f"--config.init.checkpoint={directory}")
  if metadata.get("format") == "reference-pth":
    raise config_lib.ConfigError(
        f"{where} was converted from a reference .pth (no optimiser state), it is not a training "
        f"run to resume: {start_new}")
  if not isinstance(metadata.get("config"), Mapping):
    if ALLOW_ALL in allowed:
      return []
    raise config_lib.ConfigError(
        f"{where} has no config in its metadata, so this rerun cannot be checked against it: "
        f"{start_new}, or resume anyway with --config.{ALLOW_KEY}='{ALLOW_ALL}'")
  old = dict(metadata["config"])
  new = config_json(config)
  if data is not None and isinstance(metadata.get(DATA), Mapping):
    # Older checkpoints have no data identity: only their config can be compared.
    old[DATA], new[DATA] = dict(metadata[DATA]), dict(data)
  found = differences(old, new, old_steps_per_epoch=metadata.get("steps_per_epoch"),
                      new_steps_per_epoch=steps_per_epoch)
  refused = [d for d in found if not _is_allowed(d[0], allowed)]
  if refused:
    changes = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
    keys = ",".join(k for k, _, _ in refused)
    data_note = (" (data.*: the training split in config.dataset.data_dir, from its manifest)"
                 if any(k.startswith(DATA + ".") for k, _, _ in refused) else "")
    raise config_lib.ConfigError(
        f"this config does not continue the run of {where}: {changes}{data_note}. These change "
        f"the state's shapes or what is being learnt, so nothing was done (htt_jax/resume.py "
        f"lists the keys). To continue this run on purpose, add --config.{ALLOW_KEY}={keys}; "
        f"{start_new}")
  return found


def _show(value) -> str:
  return json.dumps(value) if not isinstance(value, str) or value == ABSENT else repr(value)
