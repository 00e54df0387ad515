"""Prediction on clips: `Predictor` (Python) and the npz format of `scripts/predict.py`
(`load_clips`, `validate_clips`).

Input arrays are per frame, N = (number of clips) x T, clip-major:
  images (N,H,W,3) uint8, or float32 already normalised as x/255 - 0.5; intrinsics (N,3,3) of those
  images; not_padding (N,); optional labels joints25d (N,J,3), joints3d (N,J,3), object (N,),
  action (N,) (class indices in [0, n_o) and [0, n_a) on every frame; the clip's label is its
  first frame's, as in the reference).
Output: joints2d (N,J,2) px, depth (N,J) m, joints3d (N,J,3) m, object_probs (N,n_o),
  action_probs (N/T,n_a); with labels also loss/joints2d, loss/depth, loss/joints3d, loss/object,
  loss/action, loss/total over all the clips.
"""

import io
from typing import Iterable, Iterator, Mapping, Optional
import zipfile

import jax
import numpy as np

from htt_jax import checkpointing
from htt_jax import config_lib
from htt_jax import losses as losses_lib
from htt_jax import parallel
from htt_jax import storage

LABEL_KEYS = ("joints25d", "joints3d", "object", "action")
OUTPUT_KEYS = ("joints2d", "depth", "joints3d", "object_probs")
# What predict returns or needs for the losses.
_KEEP = ("raw_pose",) + OUTPUT_KEYS + ("object_logits", "action_logits", "action_probs")
# What `stream` returns: per-frame outputs and the attention maps of the paper's Figs. 6 and 7.
STREAM_KEYS = OUTPUT_KEYS + ("action_probs", "pose_attention", "action_attention")


def load_clips(path: str, name: Optional[str] = None) -> dict:
  """The named arrays of an .npz of clips (np.savez; local or gs://), read whole. A missing,
  empty or corrupt file, or an .npy (one unnamed array), is a ConfigError naming `name` (default:
  the path), e.g. '--clips=clips.npz'."""
  name = name or path
  try:
    loaded = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
      with loaded as data:
        return {key: data[key] for key in data.files}
  except FileNotFoundError as e:  # gcsfs's own text is its request path only
    raise config_lib.ConfigError(f"cannot read {name}: no such file") from e
  # EOFError: an empty file (numpy reads no magic bytes).
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise config_lib.ConfigError(f"cannot read {name}: {e}") from e
  raise config_lib.ConfigError(
      f"{name} holds one array of shape {np.shape(loaded)}, not an .npz of named arrays "
      "(images, intrinsics, not_padding, ...): save them with np.savez")


def validate_clips(clips: Mapping[str, np.ndarray], config, source: str = "input") -> dict:
  """Checks the arrays against the config before any compilation; returns them as numpy.

  Errors name `source` (a file name) and the key, and say what was expected.
  """
  t_clip = config.model.num_frames
  height, width = config.dataset.image_size
  joints = config.model.num_joints
  for key in ("images", "intrinsics", "not_padding"):
    if key not in clips:
      raise config_lib.ConfigError(
          f"{source}: missing array '{key}' (expected images, intrinsics, not_padding, and "
          "optionally joints25d, joints3d, object, action)")
  out = {key: np.asarray(clips[key]) for key in clips}
  images = out["images"]
  n = images.shape[0] if images.ndim else 0
  if images.ndim != 4 or images.shape[1:] != (height, width, 3):
    raise config_lib.ConfigError(
        f"{source}: 'images' has shape {images.shape}, expected (N, {height}, {width}, 3) for "
        f"config.dataset.image_size={(height, width)}")
  if images.dtype == np.uint8:
    pass
  elif images.dtype == np.float32:
    if not np.isfinite(images).all():
      raise config_lib.ConfigError(f"{source}: 'images' contains NaN or infinite values")
  else:
    raise config_lib.ConfigError(f"{source}: 'images' has dtype {images.dtype}, expected uint8 "
                                 "or float32 (normalised as x/255 - 0.5)")
  if n == 0 or n % t_clip:
    raise config_lib.ConfigError(f"{source}: N={n} frames is not a positive multiple of "
                                 f"config.model.num_frames (T={t_clip})")
  expected = {"intrinsics": (n, 3, 3), "not_padding": (n,), "joints25d": (n, joints, 3),
              "joints3d": (n, joints, 3), "object": (n,), "action": (n,)}
  for key, shape in expected.items():
    if key in out:
      if out[key].dtype.kind not in "biuf":  # strings, objects, dates: no number to compute with
        raise config_lib.ConfigError(
            f"{source}: '{key}' has dtype {out[key].dtype}, expected numbers")
      if out[key].shape != shape:
        raise config_lib.ConfigError(
            f"{source}: '{key}' has shape {out[key].shape}, expected {shape}")
      if out[key].dtype.kind == "f" and not np.isfinite(out[key]).all():
        raise config_lib.ConfigError(f"{source}: '{key}' contains NaN or infinite values")
  if (np.abs(out["intrinsics"][:, 0, 0]) == 0).any():
    raise config_lib.ConfigError(f"{source}: 'intrinsics' has frames with fx = 0")
  present = [key for key in LABEL_KEYS if key in out]
  if present and len(present) != len(LABEL_KEYS):
    missing = sorted(set(LABEL_KEYS) - set(present))
    raise config_lib.ConfigError(
        f"{source}: labels are all-or-nothing; got {present}, missing {missing}")
  for key, count in (("object", config.model.num_objects), ("action", config.model.num_actions)):
    if key in out:
      _check_class_labels(out[key], key, count, source)
  return out


def _check_class_labels(labels: np.ndarray, key: str, count: int, source: str) -> None:
  """Class indices in [0, count): the losses have no ignored label, so an index out of range gives
  a NaN loss, and -1 (unlabelled in prepared records) a finite but wrong one. Every frame counts,
  padding too (its loss is weighted 0, but 0 x NaN is NaN). Unlabelled clips are predicted
  without the label arrays."""
  expected = (f"expected whole-number class indices in [0, {count}) "
              f"(config.model.num_{key}s={count}); for unlabelled clips leave out all four "
              f"label arrays ({', '.join(LABEL_KEYS)})")
  if labels.dtype.kind == "f":
    whole = labels == np.round(labels)
    if not whole.all():
      first = int(np.argmin(whole))
      raise config_lib.ConfigError(
          f"{source}: '{key}' has {labels[first].item()!r} at frame {first}: " + expected)
  elif labels.dtype.kind not in "iu":
    raise config_lib.ConfigError(f"{source}: '{key}' has dtype {labels.dtype}: " + expected)
  outside = (labels < 0) | (labels >= count)
  if outside.any():
    first = int(np.argmax(outside))
    value = labels[first].item()
    raise config_lib.ConfigError(
        f"{source}: '{key}' has {value:g} at frame {first} ({int(outside.sum())} frame(s) out "
        "of range): " + expected)


class Predictor:
  """Runs a trained HTT on clips, `batch_size` clips per compiled call (parallel.Forward over this
  process's devices, `config.parallelism`; the last call padded).

  >>> predictor = Predictor.from_checkpoint(config, "runs/fpha/checkpoints")
  >>> out = predictor.predict({"images": ..., "intrinsics": ..., "not_padding": ...})
  """

  def __init__(self, config, variables, batch_size: Optional[int] = None):
    config_lib.validate_config(config)
    self.config = config
    self.batch_size = batch_size or config.eval_batch_size
    # This process's devices only: prediction is local, other processes need not take part.
    self._forward = parallel.Forward(config, parallel.create_mesh(jax.local_devices()),
                                     self.batch_size, keys=_KEEP)
    self.variables = self._forward.place(variables)
    self._attention_forward = None

  @classmethod
  def from_checkpoint(cls, config, checkpoint_dir: str, step: Optional[int] = None, **kwargs):
    # The parameters are checked against the config here, before Forward compiles anything.
    variables, _ = checkpointing.restore_variables(checkpoint_dir, step, config)
    return cls(config, variables, **kwargs)

  def predict(self, clips: Mapping[str, np.ndarray], source: str = "input") -> dict:
    clips = validate_clips(clips, self.config, source)
    t_clip = self.config.model.num_frames
    num_clips = clips["images"].shape[0] // t_clip
    per_clip = lambda x: x.reshape((num_clips, t_clip) + x.shape[1:])
    images, intrinsics = per_clip(clips["images"]), per_clip(clips["intrinsics"].astype(np.float32))
    not_padding = per_clip(clips["not_padding"].astype(np.float32))

    outputs = self._forward(self.variables, {"image": images, "intrinsics": intrinsics,
                                             "not_padding": not_padding})

    flat = lambda x: x.reshape((num_clips * t_clip,) + x.shape[2:])
    result = {k: flat(outputs[k]) for k in OUTPUT_KEYS}
    result["action_probs"] = outputs["action_probs"]
    if "joints25d" in clips:
      batch = {"not_padding": not_padding, "joints25d": per_clip(clips["joints25d"]),
               "joints3d": per_clip(clips["joints3d"]),
               "object": per_clip(clips["object"].astype(np.int32)),
               "action": per_clip(clips["action"].astype(np.int32))[:, 0]}
      terms = losses_lib.losses_from_config(outputs, batch, self.config)
      result.update({k: np.asarray(v) for k, v in terms.items()})
    return result

  def stream(self, batches: Iterable[Mapping[str, np.ndarray]]) -> Iterator[dict]:
    """Runs batches of clips as they come (a video's, decoded while the model runs), each through
    the same compiled forward as evaluation, with the attention maps.

    Each batch: image (C,T,H,W,3), intrinsics (C,T,3,3), not_padding (C,T) for C >= 1 clips; yields
    per batch joints2d (C,T,J,2), depth, joints3d, object_probs, action_probs (C,n_a),
    pose_attention (C,L,T/t,t,t), action_attention (C,L,T+1,T+1). Batches of `batch_size` clips
    compile once (a smaller last one is padded).
    """
    if self._attention_forward is None:
      self._attention_forward = parallel.Forward(
          self.config, self._forward.mesh, self.batch_size, return_attention=True,
          keys=STREAM_KEYS)
    for batch in batches:
      inputs = {"image": batch["image"],
                "intrinsics": np.asarray(batch["intrinsics"], np.float32),
                "not_padding": np.asarray(batch["not_padding"], np.float32)}
      yield self._attention_forward(self.variables, inputs)
