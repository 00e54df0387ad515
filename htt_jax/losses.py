"""The reference's losses (reference.md §2.1-2.4, §6.8-6.9).

total = lambda_2d * L_2d + lambda_z * L_z + lambda_object * L_object + lambda_action * L_action,
with L_2d in pixels (mean over the 2J coordinates of valid frames), L_z in metres (mean over J),
L_object the cross-entropy per valid frame, L_action the cross-entropy per clip. L_3d (metres) is
reported, never optimised.

Normalisation (`config.loss_normalization`):
  'frame': hand and object terms are averaged over all valid frames of the global batch, as the
           single-device reference computes them;
  'clip':  each clip's terms are averaged over its own valid frames, then the clips are averaged,
           as the paper's 2-GPU DataParallel run (one clip per GPU) optimised.

Hands without annotation (H2O's flag 0, `batch['hand_valid']` (B, T, K) = 0): their joints are
left out of the pose terms (reference.md §6.12; the reference would divide by their zero depth). A
frame's pose error is the mean over its annotated hands' joints, and a frame with no annotated hand
has no weight in the pose terms (it still counts for the object term). With every hand annotated
(FPHA, synthetic, and any batch without `hand_valid`) this is exactly the reference's mean over
all J.

Data parallelism: with `axis_name` (inside pmap/shard_map) every returned term is this device's
share, so that the sum of the shares over devices is the global loss; `train_step` differentiates
the share and sums the gradients. Without `axis_name` the shares are the global values.
"""

import jax.numpy as jnp
import optax
from jax import lax

LOSS_TERMS = ("joints2d", "depth", "joints3d", "object", "action")


def _global_sum(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


def _pose_error(pred, target, pose_loss):
  diff = pred - target
  return jnp.abs(diff) if pose_loss == "l1" else jnp.square(diff)


def _frame_weighted(per_frame, weight, normalization, axis_name):
  """Share of the mean of per_frame (B, T) over valid frames, under either normalisation."""
  weight = lax.stop_gradient(weight)
  if normalization == "frame":
    # The reference guards an all-padding batch with S = 1 (it cannot happen: first frames are valid).
    count = jnp.maximum(_global_sum(weight.sum(), axis_name), 1.0)
    return (per_frame * weight).sum() / count
  if normalization == "clip":
    per_clip = (per_frame * weight).sum(axis=1) / jnp.maximum(weight.sum(axis=1), 1.0)
    num_clips = _global_sum(jnp.asarray(per_clip.shape[0], jnp.float32), axis_name)
    return per_clip.sum() / num_clips
  raise ValueError(f"loss_normalization={normalization!r} is not 'frame' or 'clip'")


def joint_mask(hand_valid, num_joints):
  """(B, T, K) per-hand validity -> (B, T, J) per-joint weights (hand k owns J/K joints in order)."""
  if hand_valid is None:
    return None
  hand_valid = jnp.asarray(hand_valid, jnp.float32)
  num_hands = hand_valid.shape[-1]
  if num_joints % num_hands:
    raise ValueError(f"hand_valid has {num_hands} hands, which do not split {num_joints} joints")
  return lax.stop_gradient(jnp.repeat(hand_valid, num_joints // num_hands, axis=-1))


def compute_losses(outputs, batch, *, normalization="clip", pose_loss="l1", lambda_hand_2d=1.0,
                   lambda_hand_z=100.0, lambda_object=1.0, lambda_action=1.0, axis_name=None):
  """Loss terms of one batch.

  Args:
    outputs: the dict of `HTT.__call__` (joints2d, depth, joints3d, object_logits, action_logits).
    batch: joints25d (B,T,J,3) = (u px, v px, Z m) of the (augmented) input, joints3d (B,T,J,3) m,
      object (B,T) int, action (B,) int, not_padding (B,T), optionally hand_valid (B,T,K).
  Returns:
    {'loss/joints2d', 'loss/depth', 'loss/joints3d', 'loss/object', 'loss/action', 'loss/total'}.
  """
  weight = batch["not_padding"].astype(jnp.float32)
  target25d = batch["joints25d"].astype(jnp.float32)
  num_joints = target25d.shape[-2]
  mask = joint_mask(batch.get("hand_valid"), num_joints)  # (B, T, J) or None
  if mask is None:
    pose_mean, pose_weight = lambda e: e.mean(axis=-1), weight
  else:
    count = mask.sum(axis=-1)
    pose_mean = lambda e: (e * mask).sum(axis=-1) / jnp.maximum(count, 1.0)
    pose_weight = weight * (count > 0)
  per_frame_pose = {  # per-joint errors (B, T, J), averaged over coordinates
      "joints2d": _pose_error(outputs["joints2d"], target25d[..., :2], pose_loss).mean(axis=-1),
      "depth": _pose_error(outputs["depth"], target25d[..., 2], pose_loss),
      "joints3d": _pose_error(outputs["joints3d"], batch["joints3d"].astype(jnp.float32),
                              pose_loss).mean(axis=-1),
  }
  losses = {f"loss/{name}": _frame_weighted(pose_mean(value), pose_weight, normalization,
                                            axis_name)
            for name, value in per_frame_pose.items()}
  object_ce = optax.softmax_cross_entropy_with_integer_labels(outputs["object_logits"],
                                                              batch["object"])
  losses["loss/object"] = _frame_weighted(object_ce, weight, normalization, axis_name)
  action_ce = optax.softmax_cross_entropy_with_integer_labels(outputs["action_logits"],
                                                              batch["action"])
  num_clips = _global_sum(jnp.asarray(action_ce.shape[0], jnp.float32), axis_name)
  losses["loss/action"] = action_ce.sum() / num_clips
  losses["loss/total"] = (lambda_hand_2d * losses["loss/joints2d"]
                          + lambda_hand_z * losses["loss/depth"]
                          + lambda_object * losses["loss/object"]
                          + lambda_action * losses["loss/action"])
  return losses


def losses_from_config(outputs, batch, config, axis_name=None):
  """`compute_losses` with the weights and normalisation of a config."""
  return compute_losses(
      outputs, batch, normalization=config.loss_normalization, pose_loss=config.loss.pose_loss,
      lambda_hand_2d=config.loss.lambda_hand_2d, lambda_hand_z=config.loss.lambda_hand_z,
      lambda_object=config.loss.lambda_object, lambda_action=config.loss.lambda_action,
      axis_name=axis_name)
