"""PyTorch weights -> Flax variables: the authors' HTT checkpoints and torchvision's ResNet-18.

Public API:
  load_torch_file(path) -> object                 safe `torch.load` (see Security below)
  extract_state_dict(obj) -> {key: np.ndarray}    the model weights inside a loaded file
  reference_to_flax(state_dict, config, source=None) -> {'params', 'batch_stats'}
  flax_to_reference(variables) -> {key: np.ndarray}   exact inverse, in reference.md §5.2 order
  resnet_to_flax(state_dict, source=None) -> {'params', 'batch_stats'} of the `backbone` subtree
  load_resnet(path) -> {'params', 'batch_stats'}    a torchvision ResNet-18 file, as resnet_to_flax
  init_backbone_from_resnet(variables, path or load_resnet's result) -> new variables with an
      ImageNet backbone
  convert_reference_checkpoint(torch_path, config, output_dir) -> Orbax step path

Key and layout map (reference.md §5.2): `meshregnet.base_net.*` -> `backbone`
(`layerK.i` -> `layerK_i`, `downsample.0/1` -> `downsample_conv/bn`),
`transformer_pose.encoder` -> `pose_block/encoder`,
`transformer_action.encoder` -> `action_block/encoder`, heads renamed (see `_reference_layout`).
Linear (out, in) -> kernel (in, out); conv (out, in, kh, kw) -> (kh, kw, in, out); the fused
`in_proj_weight` (3d, d) -> `in_proj_kernel` (d, 3d), whose columns are q | k | v as the encoder
splits them; BN weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var;
`num_batches_tracked` carries nothing (running statistics never change: reference.md §1.1).
`transformer_pe.pe` is a buffer, not a weight: it is checked against our own table instead.

Security: a `.pth` file is a pickle, and unpickling can run any code. Files are read only with
`torch.load(weights_only=True)`, whose unpickler refuses every global outside an allowlist. The
reference's files (reference.md §5.1) also pickle the StepLR scheduler OBJECT, which pickles its
Adam optimizer (`Optimizer.__getstate__`: defaults, state as a `collections.defaultdict(dict)`,
param_groups). Allowing the real classes would run torch's `__setstate__` code on
attacker-controlled state, and breaks anyway: the weights-only unpickler cannot fill a real
`defaultdict`. So exactly four names are allowlisted for the load, each bound to something inert:
  torch.optim.lr_scheduler.StepLR, torch.optim.adam.Adam -> `PickledObject` subclasses that only
      store their pickled state (no torch code runs, so any torch version's pickle loads);
  collections.defaultdict -> a function returning a plain dict (its factory is ignored);
  builtins.dict -> dict itself (only the factory argument above; a dict of allowlisted values).
Anything else (os.system, builtins.eval, subprocess, other classes) is refused by torch's
unpickler before it is called, and reported as `UnsafeCheckpointError` naming the file.
"""

import json
import os
import pickle
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np
from absl import logging
from flax import traverse_util

import htt_jax
from htt_jax import checkpointing
from htt_jax.models import ResNet18, build_model, init_variables, sinusoidal_encoding

REFERENCE_PREFIX = "meshregnet.base_net."
PE_KEY = "transformer_pe.pe"
PE_LENGTH = 5000  # PositionalEncoding(max_len=5000): reference.md §1.2.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Opening lines of torch's load errors that only advise how to load the file unsafely.
_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "Check the documentation",
                 "Please file an issue")


class TorchCheckpointError(ValueError):
  """A file that is not a readable PyTorch checkpoint, or holds no state_dict."""


class UnsafeCheckpointError(TorchCheckpointError):
  """A pickle that asks for a global outside the allowlist; nothing in it was executed."""


class CheckpointMismatchError(ValueError):
  """Weights that do not fit the model: every missing, unexpected and mis-shaped key at once."""

  def __init__(self, missing, unexpected, mismatched, source=None, reason=None):
    self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
    if reason:
      super().__init__(f"{source or 'state_dict'}: {reason}")
      return
    lines = [f"{source or 'state_dict'}: the weights do not match the model of this config "
             "(check config.model.num_joints/num_objects/num_actions/hidden_dim/num_layers_*)"]
    lines.append(f"  missing keys ({len(missing)}): {', '.join(missing) or '-'}")
    lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected) or '-'}")
    lines.append(f"  mis-shaped keys ({len(mismatched)}):")
    lines += [f"    {key} [{path}]: expected {tuple(want)}, found {tuple(got)}"
              for key, path, want, got in mismatched]
    super().__init__("\n".join(lines))


class PickledObject:
  """Inert stand-in for an allowlisted pickled object: keeps args and state, runs nothing."""
  pickled_name = "?"

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __init__(self, *args, **kwargs):  # Called (and ignored) when a pickle REDUCEs the class.
    pass

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"<pickled {self.pickled_name}>"


class PickledStepLR(PickledObject):
  pickled_name = "torch.optim.lr_scheduler.StepLR"


class PickledAdam(PickledObject):
  pickled_name = "torch.optim.adam.Adam"


def _plain_dict(default_factory=None, *args):
  """`collections.defaultdict(f, ...)` as a plain dict (the factory is never called)."""
  return dict(*args)


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading PyTorch checkpoints needs PyTorch: "
                      "pip install 'htt-jax[torch]'") from e
  return torch


def load_torch_file(path: str) -> Any:
  """The object in a `.pth` file, loaded on CPU without executing any pickled code."""
  torch = _torch()
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"PyTorch checkpoint {path!r} does not exist")
  if not os.path.isfile(path):
    raise TorchCheckpointError(f"{path}: not a file")
  allowed = [(PickledStepLR, PickledStepLR.pickled_name), (PickledAdam, PickledAdam.pickled_name),
             (_plain_dict, "collections.defaultdict"), (dict, "builtins.dict")]
  try:
    with torch.serialization.safe_globals(allowed):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's weights-only unpickler stops at the first global or opcode it does not allow.
    raise UnsafeCheckpointError(
        f"{path}: refused to load: its pickle needs something outside the allowlist of "
        f"htt_jax.import_torch; nothing in it was executed ({_diagnosis(e)})") from None
  except Exception as e:  # Not a zip/legacy torch file, truncated, ...: RuntimeError, KeyError, ...
    raise TorchCheckpointError(f"{path}: not a readable PyTorch checkpoint "
                               f"({type(e).__name__}: {_diagnosis(e)})") from None


def _diagnosis(error) -> str:
  """torch's reason for a failed load, without its advice to retry with weights_only=False."""
  kept = []
  for line in str(error).splitlines():
    line = line.strip().replace("WeightsUnpickler error:", "").strip()
    if line and not line.startswith(_TORCH_ADVICE):
      kept.append(line.split(" Please use ")[0])
  return " ".join(kept)[:800] or repr(error)


def _to_numpy(value, key):
  if hasattr(value, "detach"):  # A torch tensor (or Parameter), on CPU after load_torch_file.
    torch = _torch()
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.to(torch.float32)
    return value.numpy()
  if isinstance(value, np.ndarray):
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
  raise TorchCheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")


def extract_state_dict(obj, source: Optional[str] = None) -> dict[str, np.ndarray]:
  """Weights as numpy (floats as float32), from a bare state_dict or one nested in a checkpoint.

  Like the reference's loader (reference.md §5.1): if the FIRST key contains "module", the first
  dotted component is stripped from every key (DataParallel's `module.` prefix).
  """
  where = source or "checkpoint"
  if not isinstance(obj, Mapping):
    raise TorchCheckpointError(f"{where}: holds a {type(obj).__name__}, not a dict of tensors")
  for key in _STATE_DICT_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  keys = list(obj)
  tensor_like = lambda v: hasattr(v, "detach") or isinstance(v, np.ndarray)
  if not keys or not all(isinstance(k, str) and tensor_like(obj[k]) for k in keys):
    raise TorchCheckpointError(f"{where}: no state_dict (a dict of tensors) found; its keys are "
                               f"{[str(k) for k in keys[:10]]}")
  if "module" in keys[0]:
    keys = [k.split(".", 1)[1] if "." in k else k for k in keys]
  return {new: _to_numpy(value, new) for new, value in zip(keys, obj.values())}


class _Entry(NamedTuple):
  torch_key: str
  collection: Optional[str]  # 'params' | 'batch_stats'; None: not a variable of ours.
  path: tuple  # Path inside the collection.
  kind: str  # 'copy' | 'dense' | 'conv' | 'count' (num_batches_tracked) | 'pe'.


def _linear(torch_name, path):
  return [_Entry(f"{torch_name}.weight", "params", path + ("kernel",), "dense"),
          _Entry(f"{torch_name}.bias", "params", path + ("bias",), "copy")]


def _norm(torch_name, path):
  return [_Entry(f"{torch_name}.weight", "params", path + ("scale",), "copy"),
          _Entry(f"{torch_name}.bias", "params", path + ("bias",), "copy")]


def _backbone_layout(prefix: str, path: tuple) -> list[_Entry]:
  """torchvision ResNet-18 keys in module order; each conv followed by its
  BN (reference.md §5.2)."""
  entries = []

  def conv_bn(conv, bn, flax_conv: tuple, flax_bn: tuple):
    entries.append(_Entry(f"{prefix}{conv}.weight", "params", path + flax_conv + ("kernel",),
                          "conv"))
    entries.extend(_norm(prefix + bn, path + flax_bn))
    for stat, name in (("running_mean", "mean"), ("running_var", "var")):
      entries.append(_Entry(f"{prefix}{bn}.{stat}", "batch_stats", path + flax_bn + (name,),
                            "copy"))
    entries.append(_Entry(f"{prefix}{bn}.num_batches_tracked", None, (), "count"))

  conv_bn("conv1", "bn1", ("conv1",), ("bn1",))
  for stage in range(1, 5):
    for block in range(2):
      torch_block, flax_block = f"layer{stage}.{block}", f"layer{stage}_{block}"
      for i in (1, 2):
        conv_bn(f"{torch_block}.conv{i}", f"{torch_block}.bn{i}", (flax_block, f"conv{i}"),
                (flax_block, f"bn{i}"))
      if stage > 1 and block == 0:
        conv_bn(f"{torch_block}.downsample.0", f"{torch_block}.downsample.1",
                (flax_block, "downsample_conv"), (flax_block, "downsample_bn"))
  return entries + _linear(prefix + "fc", path + ("fc",))


def _encoder_layout(prefix: str, path: tuple, num_layers: int) -> list[_Entry]:
  entries = []
  for i in range(num_layers):
    layer, flax_layer = f"{prefix}layers.{i}.", path + (f"layers_{i}",)
    entries += [
        _Entry(layer + "self_attn.in_proj_weight", "params",
               flax_layer + ("self_attn", "in_proj_kernel"), "dense"),
        _Entry(layer + "self_attn.in_proj_bias", "params",
               flax_layer + ("self_attn", "in_proj_bias"), "copy")]
    entries += _linear(layer + "self_attn.out_proj", flax_layer + ("self_attn", "out_proj"))
    for name in ("linear1", "linear2"):
      entries += _linear(layer + name, flax_layer + (name,))
    for name in ("norm1", "norm2"):
      entries += _norm(layer + name, flax_layer + (name,))
  return entries + _norm(prefix + "norm", path + ("norm",))


# The reference's linear heads between its two encoders, in its order, and our names for them.
_HEADS = (("image_to_hand_pose.mlp.0", "pose_mlp_0"), ("image_to_hand_pose.mlp.2", "pose_mlp_1"),
          ("image_to_hand_pose.mlp.4", "pose_mlp_2"), ("image_to_olabel_embed", "object_embed"),
          ("obj_classification.classifier", "object_classifier"),
          ("hand_pose3d_to_action_input", "pose_to_action"),
          ("olabel_to_action_input", "object_to_action"),
          ("concat_to_action_input", "fuse_to_action"))


def _reference_layout(num_layers_pose: int, num_layers_action: int) -> list[_Entry]:
  """Every key of a reference state_dict, in the reference's order (reference.md §5.2)."""
  return (
      [_Entry("action_token", "params", ("action_block", "action_token"), "copy")]
      + _backbone_layout(REFERENCE_PREFIX, ("backbone",))
      + [_Entry(PE_KEY, None, (), "pe")]
      + _encoder_layout("transformer_pose.encoder.", ("pose_block", "encoder"), num_layers_pose)
      + [e for torch_name, name in _HEADS for e in _linear(torch_name, (name,))]
      + _encoder_layout("transformer_action.encoder.", ("action_block", "encoder"),
                        num_layers_action)
      + _linear("action_classification.classifier", ("action_classifier",)))


# Axis permutations from the torch layout to ours: Linear (out, in) -> (in, out) and
# conv (out, in, kh, kw) -> (kh, kw, in, out). Other kinds keep their layout.
_TO_FLAX = {"dense": (1, 0), "conv": (2, 3, 1, 0)}


def _permutation(kind, to_flax):
  return _TO_FLAX[kind] if to_flax else tuple(int(i) for i in np.argsort(_TO_FLAX[kind]))


def _relayout(array, kind, to_flax):
  if kind not in _TO_FLAX:
    return array
  return np.ascontiguousarray(np.transpose(array, _permutation(kind, to_flax)))


def _torch_shape(flax_shape, kind):
  if kind not in _TO_FLAX:
    return tuple(flax_shape)
  return tuple(flax_shape[i] for i in _permutation(kind, to_flax=False))


def _convert(state_dict, layout, shapes, source, pe_rows=0):
  """Checks every key and shape first (one error listing all problems), then converts.

  `shapes` is the model's eval_shape tree (plus the encoding width under PE_KEY).
  """
  flat = traverse_util.flatten_dict({k: v for k, v in shapes.items() if k != PE_KEY})
  ours = {(e.collection,) + e.path for e in layout if e.collection}
  if ours != set(flat):  # Guards the key map itself against changes to the model.
    raise AssertionError(f"import_torch's key map is out of date: only in the map "
                         f"{sorted(ours - set(flat))[:5]}, only in the model "
                         f"{sorted(set(flat) - ours)[:5]}")
  known = {e.torch_key for e in layout}
  unexpected = [k for k in state_dict if k not in known]
  missing, mismatched = [], []
  for e in layout:
    found = state_dict.get(e.torch_key)
    if e.kind == "count":
      continue  # Optional and meaningless: the statistics are constants (reference.md §1.1).
    if e.kind == "pe":
      want = (1, PE_LENGTH, shapes[PE_KEY])
      if found is not None and (found.shape[:1] + found.shape[2:] != want[:1] + want[2:]
                                or found.shape[1] < pe_rows):
        mismatched.append((e.torch_key, "sinusoidal_encoding", want, found.shape))
      continue
    want = _torch_shape(flat[(e.collection,) + e.path].shape, e.kind)
    if found is None:
      missing.append(e.torch_key)
    elif tuple(found.shape) != want:
      mismatched.append((e.torch_key, "/".join((e.collection,) + e.path), want, found.shape))
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(missing, unexpected, mismatched, source)

  if pe_rows and PE_KEY in state_dict:
    table = state_dict[PE_KEY][0, :pe_rows]
    error = float(np.max(np.abs(table - sinusoidal_encoding(pe_rows, table.shape[1]))))
    # float32 rounding of the angle p * w_i grows with the position p (~1e-5 at p = 128).
    if not error <= max(1e-4, 2e-7 * pe_rows):
      raise CheckpointMismatchError([], [], [], source, reason=(
          f"{PE_KEY} differs from our sine/cosine table by {error:.3g} in its first {pe_rows} "
          "rows, so this is a different model"))
  return traverse_util.unflatten_dict({
      (e.collection,) + e.path: _relayout(np.asarray(state_dict[e.torch_key], np.float32), e.kind,
                                          to_flax=True)
      for e in layout if e.collection})


def _model_shapes(config):
  model = build_model(config)
  shapes = dict(jax.eval_shape(lambda rng: init_variables(model, rng, config), jax.random.key(0)))
  # The reference shares one (1, 5000, 512) table between P and A; its width is P's width.
  shapes[PE_KEY] = shapes["params"]["pose_block"]["encoder"]["layers_0"]["self_attn"][
      "in_proj_kernel"].shape[0]
  return shapes


def reference_to_flax(state_dict: Mapping[str, Any], config, source: Optional[str] = None) -> dict:
  """{'params', 'batch_stats'} (numpy float32) of the config's model from a reference state_dict.

  Raises CheckpointMismatchError listing every missing, unexpected and mis-shaped key.
  """
  state_dict = {k: _to_numpy(v, k) for k, v in state_dict.items()}
  m = config.model
  layout = _reference_layout(m.num_layers_pose, m.num_layers_action)
  return _convert(state_dict, layout, _model_shapes(config), source,
                  pe_rows=max(m.window, m.num_frames + 1))


def flax_to_reference(variables) -> dict[str, np.ndarray]:
  """The reference's state_dict (numpy, reference.md §5.2 order) of our variables,
  buffers included."""
  encoder = lambda block: variables["params"][block]["encoder"]
  count = lambda block: sum(1 for k in encoder(block) if k.startswith("layers_"))
  layout = _reference_layout(count("pose_block"), count("action_block"))
  width = encoder("pose_block")["layers_0"]["self_attn"]["in_proj_kernel"].shape[0]
  flat = traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
  result = {}
  for e in layout:
    if e.kind == "count":
      result[e.torch_key] = np.zeros((), np.int64)
    elif e.kind == "pe":
      result[e.torch_key] = sinusoidal_encoding(PE_LENGTH, width)[None]
    else:
      result[e.torch_key] = _relayout(np.asarray(flat[(e.collection,) + e.path], np.float32),
                                      e.kind, to_flax=False)
  return result


def _resnet_shapes():
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
  return dict(jax.eval_shape(lambda rng, x: ResNet18().init(rng, x), jax.random.key(0), images))


def resnet_to_flax(state_dict: Mapping[str, Any], source: Optional[str] = None) -> dict:
  """{'params', 'batch_stats'} of the `backbone` subtree from a torchvision ResNet-18 state_dict.

  Keys are torchvision's (`conv1.weight`, `layer1.0.bn1.running_mean`, ..., `fc.bias`), optionally
  under the reference's `meshregnet.base_net.` prefix. The ImageNet `fc` is required as well,
  since our backbone keeps it (it is in every reference checkpoint).
  """
  state_dict = {(k[len(REFERENCE_PREFIX):] if k.startswith(REFERENCE_PREFIX) else k):
                _to_numpy(v, k) for k, v in state_dict.items()}
  return _convert(state_dict, _backbone_layout("", ()), _resnet_shapes(), source)


def load_resnet(path: str) -> dict:
  """{'params', 'batch_stats'} of the `backbone` subtree from a torchvision ResNet-18 `.pth`."""
  return resnet_to_flax(extract_state_dict(load_torch_file(path), source=path), source=path)


def init_backbone_from_resnet(variables, path) -> dict:
  """A new variables tree whose `backbone` (params and batch_stats) comes from a ResNet-18 file
  (`path`), or from `load_resnet(path)`'s result, for a caller that read the file earlier.

  The input tree is not modified; the new backbone leaves are host numpy float32 arrays.
  """
  from_file = isinstance(path, (str, os.PathLike))
  resnet = load_resnet(path) if from_file else path
  source = os.fspath(path) if from_file else "the ResNet-18 weights given"
  for collection in ("params", "batch_stats"):
    old = jax.tree_util.tree_map(np.shape, variables[collection]["backbone"])
    new = jax.tree_util.tree_map(np.shape, resnet[collection])
    if old != new:
      raise ValueError(f"{source}: the model's backbone {collection} differ from a ResNet-18's")
  result = dict(variables)
  for collection in ("params", "batch_stats"):
    result[collection] = dict(variables[collection])
    result[collection]["backbone"] = resnet[collection]
  return result


def _check_output_dir(output_dir: str, step: int):
  """Refuses to mix with unrelated files; adding a new step to an Orbax directory is allowed."""
  if not os.path.exists(output_dir):
    return
  if not os.path.isdir(output_dir):
    raise FileExistsError(f"--output_dir {output_dir!r} exists and is not a directory")
  entries = os.listdir(output_dir)
  if not all(name.isdigit() and os.path.isdir(os.path.join(output_dir, name)) for name in entries):
    raise FileExistsError(f"--output_dir {output_dir!r} is not empty and not an Orbax checkpoint "
                          f"directory ({sorted(entries)[:5]}); choose a new directory")
  if str(step) in entries:
    raise FileExistsError(f"{output_dir!r} already holds step {step}; choose a new directory")


def convert_reference_checkpoint(torch_path: str, config, output_dir: str) -> str:
  """Reads a reference `.pth`, maps it to the config's model and writes an Orbax checkpoint.

  Everything is read and checked before anything is written. The step is the file's epoch (0 if
  absent). Returns the written step's path.
  """
  source = os.path.abspath(torch_path)
  obj = load_torch_file(source)
  epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
  if hasattr(epoch, "item"):
    epoch = epoch.item()
  valid = isinstance(epoch, (int, np.integer)) and not isinstance(epoch, bool) and epoch >= 0
  epoch = int(epoch) if valid else None
  step = epoch or 0
  variables = reference_to_flax(extract_state_dict(obj, source=source), config, source=source)
  _check_output_dir(output_dir, step)
  num_parameters = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables["params"]))
  metadata = {
      "source": source,
      "format": "reference-pth",
      "epoch": epoch,
      "network": obj.get("network") if isinstance(obj.get("network"), str) else None,
      "num_parameters": num_parameters,
      "config": json.loads(config.to_json_best_effort()),
      "htt_jax_version": htt_jax.__version__,
  }
  path = checkpointing.save_variables(output_dir, variables, step=step, metadata=metadata)
  logging.info("converted %s (epoch %s, %d parameters) -> %s", source, epoch, num_parameters, path)
  return path
