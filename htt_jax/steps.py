"""Training state, the reference's optimiser and schedule, and the pure train and eval steps.

`train_step(state, batch)` and `eval_step(state, batch)` are plain functions of arrays: the
training loop compiles `train_step` with `jax.jit` over a mesh, or wraps it in `jax.pmap` with an
`axis_name` (then gradients and metrics are summed over that axis; see `losses`). `eval_step`
(outputs and loss terms of one batch, the same `forward`) is for a user's own loop: evaluation
itself compiles `forward` alone through parallel.Forward.
"""

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state
from jax import lax

from htt_jax import augment
from htt_jax import config_lib
from htt_jax.augment import device as augment_device
from htt_jax import geometry
from htt_jax import losses as losses_lib
from htt_jax.models import build_model, init_variables

# Keys of a batch (numpy or jax arrays): image (B,T,H,W,3) uint8 or normalised float32,
# intrinsics (B,T,3,3), not_padding (B,T), joints25d (B,T,J,3), joints3d (B,T,J,3), object (B,T),
# action (B,).
MODEL_INPUTS = ("image", "intrinsics", "not_padding")


class TrainState(train_state.TrainState):
  """Parameters, Adam state and the BatchNorm statistics (constants as in the reference,
  reference.md §1.1, unless config.model.batch_norm='batch')."""
  batch_stats: Any = None


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length in optimiser steps: config.num_train_steps, or (when <= 0) num_epochs
  epochs."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs) * steps_per_epoch


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """config.lr_schedule: 'step' (the reference's StepLR, reference.md §2.6) or 'warmup_cosine'.

  'step': lr * factor ** floor(epoch / decay_epochs) stepped once per epoch; since
  epoch = floor(step / steps_per_epoch), a staircase decay every decay_epochs * steps_per_epoch
  optimiser steps. 'warmup_cosine': linear warm-up from 0 over `lr_warmup_steps`, then cosine decay
  to 0 at the last training step (num_train_steps, or num_epochs x steps per epoch).
  """
  if config.get("lr_schedule", "step") == "warmup_cosine":
    total = total_steps(config, steps_per_epoch)
    warmup = min(int(config.lr_warmup_steps), total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=max(total, warmup + 1), end_value=0.0)
  return optax.exponential_decay(
      init_value=config.learning_rate,
      transition_steps=max(1, int(config.lr_decay_epochs * steps_per_epoch)),
      decay_rate=config.lr_decay_factor,
      staircase=True)


def param_name(path) -> str:
  """A parameter's path as `config.frozen_params` matches it: 'backbone/layer1_0/conv1/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def frozen_mask(config, params):
  """A tree like `params`: True where `config.frozen_params` (a regular expression matched in full
  against `param_name`) keeps the parameter at its initial value. A pattern that matches no
  parameter is a ConfigError (a misspelt name would silently train everything)."""
  pattern = config.get("frozen_params", "")
  if not pattern:
    return jax.tree_util.tree_map(lambda _: False, params)
  regex = re.compile(pattern)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.fullmatch(param_name(p))),
                                          params)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise config_lib.ConfigError(
        f"config.frozen_params={pattern!r} matches no parameter of this model (paths look like "
        f"{param_name(jax.tree_util.tree_leaves_with_path(params)[0][0])!r})")
  return mask


def _stop_frozen(params, mask):
  """The frozen parameters behind a stop_gradient: no gradient flows into them, so XLA does not
  compute their part of the backward pass (e.g. a frozen stem: the stem's weight gradient and the
  max-pool's and the stem BatchNorm's gradients; docs/model.md)."""
  return jax.tree_util.tree_map(lambda x, frozen: lax.stop_gradient(x) if frozen else x,
                                params, mask)


def freezes_later(config) -> int:
  """The step after which `config.frozen_params` stop training (0: frozen from the start, or
  nothing is frozen)."""
  return int(config.get("frozen_params_from_step", 0)) if config.get("frozen_params", "") else 0


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """torch.optim.Adam (betas 0.9/0.999, eps 1e-8, no weight decay, no clipping:
  reference.md §2.5-2.6); `config.grad_clip_norm` > 0 clips the gradient's global norm first (an
  option, off by default). With `config.frozen_params` frozen from the start, Adam only for the
  other parameters: the frozen ones get no update and no optimiser state (optax.multi_transform).
  Frozen later (`frozen_params_from_step` > 0), Adam for every parameter, as before the freeze
  (train_step keeps the frozen values)."""
  adam = optax.adam(learning_rate_schedule(config, steps_per_epoch), b1=config.adam_b1,
                   b2=config.adam_b2, eps=config.adam_eps)
  clip = config.get("grad_clip_norm", 0.0)
  tx = optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam
  if not config.get("frozen_params", "") or freezes_later(config):
    return tx  # The plain tree: the optimiser state of runs without frozen parameters.
  labels = lambda params: jax.tree_util.tree_map(lambda f: "frozen" if f else "trained",
                                                 frozen_mask(config, params))
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


# XLA:CPU spends seconds optimising the initialisers' ~130 unrolled threefry generators (7.4 s of a
# 7.5 s start for the demo's model, 2026-12-05), for a program that runs once: unoptimised, it
# compiles in 2.4 s and runs in 1.2 s. The values differ from the optimised program's by float
# rounding only (at most 2.4e-7 in 3% of the demo model's parameters).
_INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def random_variables(config, rng):
  """The config's model variables from its random initialisers (`models.init_variables` under jit,
  so that only the initialisers run)."""
  init = jax.jit(functools.partial(init_variables, build_model(config), config=config))
  options = _INIT_COMPILER_OPTIONS.get(jax.default_backend())
  return init.lower(rng).compile(compiler_options=options)(rng)


def create_train_state(config, rng, steps_per_epoch: int, variables=None) -> TrainState:
  """A fresh TrainState from `variables`, by default `random_variables(config, rng)`.

  The reference starts from ImageNet weights: with `config.init.resnet_checkpoint` set, the caller
  loads them (train.py: `import_torch.init_backbone_from_resnet`) and passes `variables`; this
  module never reads PyTorch files.
  """
  model = build_model(config)
  if variables is None:
    if config.init.resnet_checkpoint:
      raise ValueError(
          f"config.init.resnet_checkpoint is {config.init.resnet_checkpoint!r}: load it with "
          "import_torch.init_backbone_from_resnet(random_variables(config, rng), path) and pass "
          "the result as `variables`")
    variables = random_variables(config, rng)
  tx = make_optimizer(config, steps_per_epoch)

  def create(variables):
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              batch_stats=variables["batch_stats"], tx=tx)
    # Flax starts `step` as a Python 0, a weakly typed int32 once on a device; a restored step is
    # strongly typed. A strong int32 from the start gives a fresh and a resumed run the same
    # abstract state, hence the same compiled train step (and one persistent-cache entry).
    return state.replace(step=jnp.zeros((), jnp.int32))

  # One compiled program: run eagerly, the optimiser's init dispatches (and compiles) an op per
  # parameter array, about 1 s for the demo's model against 0.4 s (docs/benchmarks.md).
  return jax.jit(create)(variables)


def calibrate_batch_norm(state: TrainState, batch, *, config) -> TrainState:
  """Sets the backbone's BatchNorm statistics to those of `batch` (one forward pass).

  The reference keeps BatchNorm statistics fixed at their ImageNet values. Without ImageNet weights
  (the synthetic demo) the default statistics (mean 0, variance 1) normalise nothing, and a random
  ResNet-18's activations grow layer by layer; measuring them once on training data, then keeping
  them fixed as the reference does, restores a working normalisation.
  """
  model = _model(state, config).clone(calibrate_batch_norm=True)
  _, updates = forward(model.apply, {"params": state.params, "batch_stats": state.batch_stats},
                       batch, mutable=["batch_stats"])
  return state.replace(batch_stats=updates["batch_stats"])


def calibrate_pose_head(state: TrainState, batch, *, config) -> TrainState:
  """Shifts the last pose layer's bias so that the mean prediction on `batch` is its mean pose.

  The depth of a joint is Z = fx * 1e-4 * s + 0.4 m (geometry.to_25d): on small images (fx = 70 px
  at 96 px wide, 349 px at 480) the training-mean depth needs s ~ 11, which a bias moving ~lr per
  Adam step does not reach in a short run from random weights. Like `calibrate_batch_norm`, one
  forward pass on a training batch, for training without pretrained weights only; the mean is over
  real frames and annotated hands, per joint and coordinate of (a, b, s).
  """
  outputs = _forward(state, state.params, batch)
  height, width = batch["image"].shape[2:4]
  target = geometry.from_25d(batch["joints25d"][..., :2].astype(jnp.float32),
                             batch["joints25d"][..., 2].astype(jnp.float32),
                             batch["intrinsics"].astype(jnp.float32), (height, width))
  num_joints = target.shape[-2]
  weight = jnp.broadcast_to(batch["not_padding"].astype(jnp.float32)[..., None],
                            target.shape[:-1])  # (B, T, J)
  joint_mask = losses_lib.joint_mask(batch.get("hand_valid"), num_joints)
  if joint_mask is not None:
    weight = weight * joint_mask
  error = (target - outputs["raw_pose"]) * weight[..., None]
  shift = error.sum(axis=(0, 1)) / jnp.maximum(weight.sum(axis=(0, 1)), 1.0)[:, None]  # (J, 3)
  head = dict(state.params["pose_mlp_2"])
  head["bias"] = head["bias"] + shift.reshape(-1).astype(head["bias"].dtype)
  return state.replace(params=dict(state.params, pose_mlp_2=head))


def forward(apply_fn, variables, batch, return_attention=False, mutable=False):
  """The model on a batch's MODEL_INPUTS: the one forward body of training, evaluation,
  prediction, the benchmark (parallel.Forward compiles it for the last three) and the BatchNorm
  calibration.

  `mutable=["batch_stats"]`: BatchNorm normalises with the batch's own statistics (Flax's
  train=True) and the call returns (outputs, {"batch_stats": updated running statistics}), for
  config.model.batch_norm='batch' and `calibrate_batch_norm`; otherwise only the outputs.
  """
  inputs = (batch[k] for k in MODEL_INPUTS)
  if not mutable:
    return apply_fn(variables, *inputs, return_attention=return_attention)
  return apply_fn(variables, *inputs, return_attention=return_attention, train=True,
                  mutable=mutable)


def _model(state, config):
  """The state's own model (so the backend choice made when it was built holds while tracing),
  else the config's."""
  model = getattr(state.apply_fn, "__self__", None)
  return model if isinstance(model, nn.Module) else build_model(config)


def _forward(state, params, batch, return_attention=False):
  return forward(state.apply_fn, {"params": params, "batch_stats": state.batch_stats}, batch,
                 return_attention=return_attention)


def train_step(state: TrainState, batch, *, config, learning_rate_fn=None, axis_name=None,
               freeze: bool = True):
  """One Adam step on the batch; returns (new_state, metrics) with every loss term.

  `freeze`: whether `config.frozen_params` are frozen in this step (the train loop passes False
  before `config.frozen_params_from_step`: a separate compiled step, since what the backward pass
  computes is fixed when the step is traced). A batch with aug_* params
  (dataset.augment.on_device) is augmented here first."""
  if augment_device.has_params(batch):
    hue_enabled = augment.from_config(config).hue > 0
    batch = dict(batch, image=augment_device.augment_batch(batch, hue_enabled=hue_enabled))

  batch_statistics = config.model.get("batch_norm", "frozen") == "batch"
  if batch_statistics:
    # BatchNorm over the global batch: under pmap its statistics are averaged over `axis_name`
    # (equal clips per device, so that is the global mean); under jit the batch is global already.
    model = _model(state, config).clone(batch_norm_axis_name=axis_name)

  # Python booleans: fixed when the step is traced.
  frozen = (frozen_mask(config, state.params) if freeze
            else jax.tree_util.tree_map(lambda _: False, state.params))

  def loss_fn(params):
    params = _stop_frozen(params, frozen)
    variables = {"params": params, "batch_stats": state.batch_stats}
    if batch_statistics:
      outputs, updates = forward(model.apply, variables, batch, mutable=["batch_stats"])
    else:
      outputs, updates = forward(state.apply_fn, variables, batch), {}
    terms = losses_lib.losses_from_config(outputs, batch, config, axis_name=axis_name)
    return terms["loss/total"], (terms, updates)

  grads, (terms, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # Each device differentiated its share of the global loss: the sum is the global gradient.
    grads = lax.psum(grads, axis_name)
    terms = lax.psum(terms, axis_name)
  new_state = state.apply_gradients(grads=grads)
  if freeze and freezes_later(config):
    # Adam still has state for the frozen parameters (the run trained them until now): their zero
    # gradient would still move them by Adam's momentum, so they keep their values here.
    new_state = new_state.replace(params=jax.tree_util.tree_map(
        lambda f, old, new: old if f else new, frozen, state.params, new_state.params))
  if batch_statistics:
    new_state = new_state.replace(batch_stats=updates["batch_stats"])
  metrics = dict(terms)
  metrics["loss"] = terms["loss/total"]
  if learning_rate_fn is not None:
    metrics["learning_rate"] = learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(state: TrainState, batch, *, config=None, return_attention=False, axis_name=None):
  """Forward pass; with labels in the batch (and a config) also the loss terms."""
  outputs = _forward(state, state.params, batch, return_attention=return_attention)
  if config is not None and "joints25d" in batch:
    terms = losses_lib.losses_from_config(outputs, batch, config, axis_name=axis_name)
    if axis_name is not None:
      terms = lax.psum(terms, axis_name)
    outputs.update(terms)
  return outputs
