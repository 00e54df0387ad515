"""Losses against hand-computed values, the per-device share rule, the schedule, and training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_batch
from htt_jax import losses as losses_lib
from htt_jax import steps
from htt_jax.config_lib import ConfigError, validate_config
from htt_jax.models import build_model


def _tiny_case():
  """2 clips x 3 frames x 1 joint; clip 0 has 2 valid frames, clip 1 has 1."""
  not_padding = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  target = np.zeros((2, 3, 1, 3), np.float32)
  pred2d = np.zeros((2, 3, 1, 2), np.float32)
  pred2d[0, 0, 0] = [2, 4]  # L1 mean over (u, v) = 3
  pred2d[0, 1, 0] = [1, 1]  # 1
  pred2d[0, 2, 0] = [100, 100]  # padding: ignored
  pred2d[1, 0, 0] = [6, 0]  # 3
  depth = np.zeros((2, 3, 1), np.float32)
  depth[0, 0], depth[0, 1], depth[1, 0], depth[1, 1] = 0.1, 0.3, 0.2, 9.0
  # Object logits: uniform over 2 classes -> CE = log 2 for every frame; frame (0,1) confident.
  object_logits = np.zeros((2, 3, 2), np.float32)
  object_logits[0, 1] = [10.0, 0.0]
  action_logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], np.float32)
  outputs = dict(joints2d=pred2d, depth=depth,
                 joints3d=np.concatenate([pred2d, depth[..., None]], -1),
                 object_logits=object_logits, action_logits=action_logits)
  batch = dict(not_padding=not_padding, joints25d=target, joints3d=target,
               object=np.zeros((2, 3), np.int32), action=np.array([0, 1], np.int32))
  return outputs, batch


def test_frame_normalisation_by_hand():
  outputs, batch = _tiny_case()
  got = losses_lib.compute_losses(outputs, batch, normalization="frame")
  ce_conf = np.log1p(np.exp(-10.0))
  expected = {
      "loss/joints2d": (3 + 1 + 3) / 3,
      "loss/depth": (0.1 + 0.3 + 0.2) / 3,
      "loss/object": (np.log(2) + ce_conf + np.log(2)) / 3,
      # Clip 0: p(0) = 1/2; clip 1: logits (log 3, 0) -> p(1) = 1/4.
      "loss/action": (np.log(2) + np.log(4)) / 2,
      "loss/joints3d": ((2 + 4 + 0.1) / 3 + (1 + 1 + 0.3) / 3 + (6 + 0 + 0.2) / 3) / 3,
  }
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)
  total = expected["loss/joints2d"] + 100 * expected["loss/depth"] + expected["loss/object"] + \
      expected["loss/action"]
  np.testing.assert_allclose(got["loss/total"], total, rtol=1e-5)


def test_clip_normalisation_by_hand():
  outputs, batch = _tiny_case()
  got = losses_lib.compute_losses(outputs, batch, normalization="clip", lambda_hand_z=10.0)
  ce_conf = np.log1p(np.exp(-10.0))
  joints2d = ((3 + 1) / 2 + 3 / 1) / 2
  depth = ((0.1 + 0.3) / 2 + 0.2) / 2
  obj = ((np.log(2) + ce_conf) / 2 + np.log(2)) / 2
  np.testing.assert_allclose(got["loss/joints2d"], joints2d, rtol=1e-5)
  np.testing.assert_allclose(got["loss/depth"], depth, rtol=1e-5)
  np.testing.assert_allclose(got["loss/object"], obj, rtol=1e-5)
  np.testing.assert_allclose(got["loss/total"],
                             joints2d + 10 * depth + obj + (np.log(2) + np.log(4)) / 2, rtol=1e-5)


def test_l2_pose_loss_squares_errors():
  outputs, batch = _tiny_case()
  got = losses_lib.compute_losses(outputs, batch, normalization="frame", pose_loss="l2")
  np.testing.assert_allclose(got["loss/joints2d"], ((4 + 16) / 2 + 1 + 36 / 2) / 3, rtol=1e-5)


def test_unannotated_hands_are_left_out_of_the_pose_terms():
  """H2O: 1 clip x 3 frames x 2 hands (1 joint each). Frame 0: both hands annotated; frame 1: the
  left hand is not (its huge error must not count); frame 2: neither (no pose weight at all, but
  its object term still counts)."""
  pred2d = np.zeros((1, 3, 2, 2), np.float32)
  pred2d[0, 0] = [[2, 2], [4, 4]]  # per-joint L1 over (u, v): 2 and 4
  pred2d[0, 1] = [[1e6, 1e6], [6, 6]]  # left unannotated; right 6
  pred2d[0, 2] = [[1e6, 1e6], [1e6, 1e6]]
  depth = np.array([[[0.1, 0.3], [1e3, 0.5], [1e3, 1e3]]], np.float32)
  outputs = dict(joints2d=pred2d, depth=depth,
                 joints3d=np.concatenate([pred2d, depth[..., None]], -1),
                 object_logits=np.zeros((1, 3, 2), np.float32),
                 action_logits=np.zeros((1, 2), np.float32))
  batch = dict(not_padding=np.ones((1, 3), np.float32), joints25d=np.zeros((1, 3, 2, 3), np.float32),
               joints3d=np.zeros((1, 3, 2, 3), np.float32), object=np.zeros((1, 3), np.int32),
               action=np.zeros((1,), np.int32),
               hand_valid=np.array([[[1, 1], [0, 1], [0, 0]]], np.float32))
  for normalization in ("frame", "clip"):  # one clip: both give the same values
    got = losses_lib.compute_losses(outputs, batch, normalization=normalization)
    np.testing.assert_allclose(got["loss/joints2d"], ((2 + 4) / 2 + 6) / 2, rtol=1e-6)
    np.testing.assert_allclose(got["loss/depth"], ((0.1 + 0.3) / 2 + 0.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(got["loss/joints3d"],
                               ((2 + 2 + 0.1) / 3 / 2 + (4 + 4 + 0.3) / 3 / 2 + (6 + 6 + 0.5) / 3) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(got["loss/object"], np.log(2), rtol=1e-6)  # all 3 frames
  # Every hand annotated: the same as a batch without hand_valid (the reference's mean over J).
  batch["hand_valid"] = np.ones((1, 3, 2), np.float32)
  with_flags = losses_lib.compute_losses(outputs, batch)
  del batch["hand_valid"]
  without = losses_lib.compute_losses(outputs, batch)
  for key in without:
    np.testing.assert_allclose(with_flags[key], without[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("normalization", ["frame", "clip"])
def test_device_shares_sum_to_the_global_loss(normalization):
  """With an axis name every device returns its share; shares add up to the global value."""
  rng = np.random.default_rng(0)
  b, t, j = 4, 5, 2
  outputs = dict(joints2d=rng.normal(size=(b, t, j, 2)), depth=rng.normal(size=(b, t, j)),
                 joints3d=rng.normal(size=(b, t, j, 3)), object_logits=rng.normal(size=(b, t, 3)),
                 action_logits=rng.normal(size=(b, 4)))
  not_padding = (np.arange(t)[None] < np.array([5, 1, 3, 2])[:, None]).astype(np.float32)
  batch = dict(not_padding=not_padding, joints25d=rng.normal(size=(b, t, j, 3)),
               joints3d=rng.normal(size=(b, t, j, 3)), object=rng.integers(0, 3, (b, t)),
               action=rng.integers(0, 4, (b,)))
  whole = losses_lib.compute_losses(outputs, batch, normalization=normalization)
  split = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).reshape((2, b // 2) + x.shape[1:]),
                                    tree)
  shares = jax.vmap(functools.partial(losses_lib.compute_losses, normalization=normalization,
                                      axis_name="devices"), axis_name="devices")(
                                          split(outputs), split(batch))
  for key in whole:
    np.testing.assert_allclose(shares[key].sum(), whole[key], rtol=1e-5, err_msg=key)


def test_schedule_halves_every_15_epochs(smoke_config):
  schedule = steps.learning_rate_schedule(smoke_config, steps_per_epoch=10)
  lr = smoke_config.learning_rate
  for step, expected in [(0, lr), (149, lr), (150, lr / 2), (299, lr / 2), (300, lr / 4),
                         (449, lr / 4)]:
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, err_msg=str(step))


def test_training_steps_lower_the_loss_on_a_fixed_batch(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.learning_rate = 1e-3
  batch = random_batch(config, valid_frames=[32, 20])
  # One hand pose and one object throughout, so that a few steps can fit them.
  for key in ("joints3d", "joints25d"):
    batch[key] = np.broadcast_to(batch[key][:1, :1], batch[key].shape).copy()
  batch["object"][:] = 1
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=100)
  schedule = steps.learning_rate_schedule(config, 100)
  step = jax.jit(functools.partial(steps.train_step, config=config, learning_rate_fn=schedule),
                 donate_argnums=0)
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append({k: float(v) for k, v in metrics.items()})
  assert int(state.step) == 8
  first, last = losses[0], losses[-1]
  assert last["loss"] < 0.7 * first["loss"], [m["loss"] for m in losses]
  assert last["loss/joints2d"] < 0.75 * first["loss/joints2d"]
  assert last["loss/object"] < 0.1 * first["loss/object"]
  assert last["loss/action"] < 0.5 * first["loss/action"]
  np.testing.assert_allclose(losses[0]["learning_rate"], 1e-3)
  # The eval step's loss on a state is what the next train step reports (before its update).
  eval_out = jax.jit(functools.partial(steps.eval_step, config=config))(state, batch)
  _, metrics = step(state, batch)
  np.testing.assert_allclose(eval_out["loss/total"], metrics["loss"], rtol=1e-5)


def test_batch_norm_statistics_never_change(smoke_config):
  state = steps.create_train_state(smoke_config, jax.random.key(0), steps_per_epoch=10)
  before = jax.tree.map(np.asarray, state.batch_stats)
  step = jax.jit(functools.partial(steps.train_step, config=smoke_config))
  state, _ = step(state, random_batch(smoke_config))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.batch_stats))


def test_batch_norm_calibration_measures_the_batch(smoke_config):
  from jax import lax  # pylint: disable=g-import-not-at-top
  state = steps.create_train_state(smoke_config, jax.random.key(0), steps_per_epoch=10)
  batch = random_batch(smoke_config)
  calibrated = jax.jit(functools.partial(steps.calibrate_batch_norm, config=smoke_config))(
      state, batch)
  # bn1 sees conv1 of the normalised images: its statistics are that output's per-channel moments.
  images = batch["image"].reshape((-1,) + batch["image"].shape[2:]).astype(np.float32) / 255 - 0.5
  conv1 = lax.conv_general_dilated(images, state.params["backbone"]["conv1"]["kernel"], (2, 2),
                                   ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stats = calibrated.batch_stats["backbone"]["bn1"]
  np.testing.assert_allclose(stats["mean"], conv1.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(stats["var"], conv1.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)
  # Parameters are untouched, and training afterwards keeps the statistics fixed.
  jax.tree.map(np.testing.assert_array_equal, state.params, calibrated.params)
  after, _ = jax.jit(functools.partial(steps.train_step, config=smoke_config))(calibrated, batch)
  jax.tree.map(np.testing.assert_array_equal, calibrated.batch_stats, after.batch_stats)


def test_pose_head_calibration_predicts_the_batch_mean_pose(smoke_config):
  state = steps.create_train_state(smoke_config, jax.random.key(0), steps_per_epoch=10)
  batch = random_batch(smoke_config, valid_frames=[smoke_config.model.num_frames, 5])
  # Padded frames carry absurd labels: they must not enter the mean.
  batch["joints25d"][1, 5:] = 1e4
  calibrated = jax.jit(functools.partial(steps.calibrate_pose_head, config=smoke_config))(
      state, batch)
  outputs = jax.jit(lambda s: steps._forward(s, s.params, batch))(calibrated)  # pylint: disable=protected-access
  real = batch["not_padding"] > 0
  # Mean over real frames of the predicted u, v (px) and Z (m) per joint == that of the labels:
  # fx is the same in every frame here, so to_25d is one affine map and means carry through it.
  np.testing.assert_allclose(np.asarray(outputs["joints2d"])[real].mean(0),
                             batch["joints25d"][real][..., :2].mean(0), rtol=1e-4, atol=0.01)
  np.testing.assert_allclose(np.asarray(outputs["depth"])[real].mean(0),
                             batch["joints25d"][real][..., 2].mean(0), atol=1e-5)
  # Only that bias moved.
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params, calibrated.params)
  assert [jax.tree_util.keystr(p) for p, c in jax.tree_util.tree_leaves_with_path(changed) if c] \
      == ["['pose_mlp_2']['bias']"]


def test_batch_statistics_option_normalises_with_the_batch_and_keeps_running_averages(
    smoke_config):
  """model.batch_norm='batch': the step's BatchNorm uses the batch's moments (those a calibration
  measures: checked against conv1 above) and the running ones move by (1 - momentum) towards them."""
  config = smoke_config.copy_and_resolve_references()
  config.model.batch_norm, config.model.batch_norm_momentum = "batch", 0.75
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  batch = random_batch(config)
  measured = jax.jit(functools.partial(steps.calibrate_batch_norm, config=config))(state, batch)
  after, metrics = jax.jit(functools.partial(steps.train_step, config=config))(state, batch)
  expected = jax.tree.map(lambda old, new: 0.75 * old + 0.25 * new, state.batch_stats,
                          measured.batch_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), expected,
               after.batch_stats)
  # The loss is that of the batch-normalised forward pass, not of the running statistics.
  frozen = jax.jit(functools.partial(steps.eval_step, config=config))(state, batch)
  normalised = jax.jit(functools.partial(steps.eval_step, config=config))(measured, batch)
  np.testing.assert_allclose(metrics["loss"], normalised["loss/total"], rtol=1e-4)
  assert abs(float(metrics["loss"]) - float(frozen["loss/total"])) > 1e-3


def test_batch_norm_option_is_validated(smoke_config):
  from htt_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = smoke_config.copy_and_resolve_references()
  config.model.batch_norm = "train"
  with pytest.raises(ValueError, match=r"config\.model\.batch_norm='train'"):
    config_lib.validate_config(config)
  config.model.batch_norm, config.model.batch_norm_momentum = "batch", 1.0
  with pytest.raises(ValueError, match=r"config\.model\.batch_norm_momentum=1\.0"):
    config_lib.validate_config(config)


def test_warmup_cosine_schedule(smoke_config):
  """lr_schedule='warmup_cosine': linear from 0 to the peak over lr_warmup_steps, cosine to 0 at the
  last training step."""
  config = smoke_config.copy_and_resolve_references()
  config.lr_schedule, config.lr_warmup_steps, config.num_train_steps = "warmup_cosine", 10, 110
  config.learning_rate = 1e-3
  schedule = steps.learning_rate_schedule(config, steps_per_epoch=7)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_gradient_clipping_option(smoke_config):
  """grad_clip_norm > 0 scales a gradient whose global norm exceeds it down to that norm before
  Adam; smaller gradients pass unchanged; 0 (the reference) is plain Adam."""
  config = smoke_config.copy_and_resolve_references()
  params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
  big, small = {"a": jnp.array([30.0]), "b": jnp.array([40.0])}, \
      {"a": jnp.array([0.3]), "b": jnp.array([0.4])}  # global norms 50 and 0.5

  def updates(clip, grads):
    config.grad_clip_norm = clip
    tx = steps.make_optimizer(config, steps_per_epoch=10)
    state, out = tx.init(params), []
    for g in grads:
      update, state = tx.update(g, state, params)
      out.append(np.concatenate([update["a"], update["b"]]))
    return np.stack(out)

  clipped = updates(1.0, [big, small])
  # Adam after clipping = plain Adam fed the clipped gradients: big / 50 (norm 1), small as is.
  np.testing.assert_allclose(
      clipped, updates(0.0, [jax.tree.map(lambda x: x / 50.0, big), small]), rtol=1e-6)
  # And not plain Adam on the raw gradients (its second update follows their ratio 100:1).
  assert not np.allclose(clipped, updates(0.0, [big, small]), rtol=1e-3)


def test_train_state_from_random_or_given_variables(smoke_config):
  """create_train_state's default is `random_variables` (same rng use as before it took
  `variables`); a config naming ImageNet weights needs them passed (train.py loads them)."""
  rng = jax.random.key(5)
  default = steps.create_train_state(smoke_config, rng, steps_per_epoch=10)
  given = steps.create_train_state(smoke_config, rng, steps_per_epoch=10,
                                   variables=steps.random_variables(smoke_config, rng))
  jax.tree.map(np.testing.assert_array_equal, (default.params, default.batch_stats),
               (given.params, given.batch_stats))
  config = smoke_config.copy_and_resolve_references()
  config.init.resnet_checkpoint = "/weights/resnet18.pth"
  with pytest.raises(ValueError, match="init_backbone_from_resnet"):
    steps.create_train_state(config, rng, steps_per_epoch=10)


def test_steps_keep_the_backend_choice_of_the_state_model(smoke_config):
  """train_step and calibrate_batch_norm rebuild the model from the state's (whose cpu_kernels
  build_model chose once), not from the backend seen while tracing."""
  config = smoke_config.copy_and_resolve_references()
  config.model.batch_norm = "batch"  # the train step clones the model for the pmap axis
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  batch = random_batch(config)
  for cpu_kernels in (True, False):
    state = state.replace(apply_fn=build_model(config, cpu_kernels=cpu_kernels).apply)
    for step in (steps.train_step, steps.calibrate_batch_norm):
      text = jax.jit(functools.partial(step, config=config)).lower(state, batch).as_text()
      assert ("optimization_barrier" in text) == cpu_kernels, (step.__name__, cpu_kernels)


STEM = r"backbone/(conv1|bn1)/\w+"
STEM_AND_LAYER1 = r"backbone/(conv1|bn1|layer1_\d/\w+)/\w+"


def _leaves(tree):
  return {steps.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_frozen_parameters_keep_their_values_and_the_others_train_as_without(smoke_config):
  """config.frozen_params: the matching parameters never change and have no Adam state; the
  others get the gradient they get without freezing (step 1 from the same state: Adam's update
  of a parameter depends on its own gradient only)."""
  config = smoke_config.copy_and_resolve_references()
  batch = random_batch(config)
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  plain, _ = jax.jit(functools.partial(steps.train_step, config=config))(state, batch)
  config.frozen_params = STEM
  frozen_state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  names = {"backbone/conv1/kernel", "backbone/bn1/scale", "backbone/bn1/bias"}
  assert {k for k, f in _leaves(steps.frozen_mask(config, frozen_state.params)).items() if f} == \
      names
  # Adam's two moments are kept for the trained parameters only.
  assert len(jax.tree_util.tree_leaves(frozen_state.opt_state)) == \
      len(jax.tree_util.tree_leaves(state.opt_state)) - 2 * 3
  step = jax.jit(functools.partial(steps.train_step, config=config))
  after, _ = step(frozen_state, batch)
  before, one, unfrozen = _leaves(state.params), _leaves(after.params), _leaves(plain.params)
  for name in names:
    np.testing.assert_array_equal(one[name], before[name], err_msg=name)
    assert not np.allclose(unfrozen[name], before[name]), name  # it would have trained
  for name in set(before) - names - {"backbone/fc/kernel", "backbone/fc/bias"}:
    assert not np.array_equal(one[name], before[name]), name
    np.testing.assert_allclose(one[name], unfrozen[name], rtol=1e-5, atol=1e-7, err_msg=name)
  after, _ = step(after, batch)
  assert all(np.array_equal(_leaves(after.params)[n], before[n]) for n in names)


def _convolutions(config, state, batch, **kwargs):
  lowered = jax.jit(functools.partial(steps.train_step, config=config, **kwargs)).lower(state,
                                                                                        batch)
  return lowered.as_text().count("stablehlo.convolution")


def test_frozen_parameters_skip_their_backward_pass(smoke_config):
  """The cost that freezing saves: no convolution computes a gradient that only frozen parameters
  would take. ResNet-18's 20 convolutions give 59 in a train step (20 forward, 20 weight
  gradients, 19 input gradients: the image's is never computed). Freezing the stem drops its
  weight gradient and the input gradient of layer1_0's first convolution (whose input is the
  stem's output: 2); freezing the stem and layer1 drops the stem's weight gradient, layer1's 4
  weight and 4 input gradients, and the input gradients of layer2_0's first and shortcut
  convolutions (11)."""
  config = smoke_config.copy_and_resolve_references()
  batch = random_batch(config)
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  counts = {}
  for pattern in ("", STEM, STEM_AND_LAYER1):
    config.frozen_params = pattern
    counts[pattern] = _convolutions(config, state, batch)
  assert counts[""] == 59, counts
  assert counts[""] - counts[STEM] == 2, counts
  assert counts[""] - counts[STEM_AND_LAYER1] == 11, counts


def test_frozen_from_a_step_trains_everything_until_then_and_keeps_the_values_after(smoke_config):
  """config.frozen_params_from_step > 0: Adam keeps state for every parameter (the tree of a run
  without freezing); before the freeze (freeze=False) the step is exactly the plain one; after it
  (freeze=True) the frozen parameters keep their values, although Adam's momentum from the steps
  before would still move them, their backward pass is gone and the others train."""
  config = smoke_config.copy_and_resolve_references()
  batch = random_batch(config)
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  plain, _ = jax.jit(functools.partial(steps.train_step, config=config))(state, batch)
  late = config.copy_and_resolve_references()
  late.frozen_params, late.frozen_params_from_step = STEM_AND_LAYER1, 5
  validate_config(late)
  late_state = steps.create_train_state(late, jax.random.key(0), steps_per_epoch=10)
  assert jax.tree.structure(late_state.opt_state) == jax.tree.structure(state.opt_state)
  before = jax.jit(functools.partial(steps.train_step, config=late, freeze=False))
  after = jax.jit(functools.partial(steps.train_step, config=late, freeze=True))
  one, _ = before(late_state, batch)
  jax.tree.map(np.testing.assert_array_equal, one.params, plain.params)
  two, _ = after(one, batch)
  names = {k for k, f in _leaves(steps.frozen_mask(late, one.params)).items() if f}
  assert len(names) == 3 + 2 * 6, sorted(names)  # the stem; 2 blocks of 2 convolutions + 2 BNs
  trained, kept = _leaves(one.params), _leaves(two.params)
  for name in names:
    np.testing.assert_array_equal(kept[name], trained[name], err_msg=name)
  for name in set(trained) - names - {"backbone/fc/kernel", "backbone/fc/bias"}:
    assert not np.array_equal(kept[name], trained[name]), name
  counts = {freeze: _convolutions(late, one, batch, freeze=freeze) for freeze in (False, True)}
  assert counts == {False: 59, True: 59 - 11}, counts


def test_frozen_params_errors(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.frozen_params = "backbone/(conv1"
  with pytest.raises(ConfigError, match=r"config.frozen_params='backbone/\(conv1' must be a "
                                        "regular expression"):
    validate_config(config)
  config.frozen_params = "resnet/conv1/kernel"  # a misspelt path must not train everything
  with pytest.raises(ConfigError, match=r"config.frozen_params='resnet/conv1/kernel' matches no "
                                        r"parameter of this model \(paths look like '"):
    steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
  config.frozen_params = ""
  config.frozen_params_from_step = 300
  with pytest.raises(ConfigError, match=r"config.frozen_params_from_step=300 needs "
                                        r"config.frozen_params"):
    validate_config(config)
  config.frozen_params = STEM
  config.frozen_params_from_step = -1
  with pytest.raises(ConfigError, match=r"config.frozen_params_from_step=-1 must be an integer "
                                        ">= 0"):
    validate_config(config)
