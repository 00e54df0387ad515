"""Camera geometry: the reference's 2.5D -> 3D recovery (reference.md §1.6) and
pinhole projection."""

import jax.numpy as jnp

# Constants of the reference's To25DBranch.
TRANS_FACTOR = 100.0  # Pixels per unit of the pose MLP's (a, b) outputs.
SCALE_FACTOR = 1e-4  # Depth units: Z = fx * SCALE_FACTOR * s + DEPTH_OFFSET.
DEPTH_OFFSET = 0.4  # Metres.


def to_25d(raw_pose, intrinsics, image_size, trans_factor=TRANS_FACTOR, scale_factor=SCALE_FACTOR,
           depth_offset=DEPTH_OFFSET):
  """Turns the pose MLP's raw output into 2D pixels, absolute depth and camera-space 3D.

  Args:
    raw_pose: (..., J, 3) = (a, b, s) per joint.
    intrinsics: (..., 3, 3) intrinsics of the image the network saw (augmented ones in training).
    image_size: (H, W) of the network's input; the 2D offsets are relative to its centre.
  Returns:
    joints2d (..., J, 2) px, depth (..., J) m, joints3d (..., J, 3) m.
  The reference back-projects Y with fx, not fy (reference.md §6.6); so do we.
  """
  height, width = image_size
  a, b, s = raw_pose[..., 0], raw_pose[..., 1], raw_pose[..., 2]
  u = trans_factor * a + width / 2
  v = trans_factor * b + height / 2
  fx = intrinsics[..., 0, 0][..., None]
  cx = intrinsics[..., 0, 2][..., None]
  cy = intrinsics[..., 1, 2][..., None]
  depth = fx * (scale_factor * s) + depth_offset
  x = (u - cx) * depth / fx
  y = (v - cy) * depth / fx
  return jnp.stack([u, v], -1), depth, jnp.stack([x, y, depth], -1)


def from_25d(joints2d, depth, intrinsics, image_size, trans_factor=TRANS_FACTOR,
             scale_factor=SCALE_FACTOR, depth_offset=DEPTH_OFFSET):
  """The inverse of `to_25d`: the raw (a, b, s) that give `joints2d` (..., J, 2) px and `depth`
  (..., J) m on an (H, W) input with these intrinsics."""
  height, width = image_size
  fx = intrinsics[..., 0, 0][..., None]
  a = (joints2d[..., 0] - width / 2) / trans_factor
  b = (joints2d[..., 1] - height / 2) / trans_factor
  s = (depth - depth_offset) / (fx * scale_factor)
  return jnp.stack([a, b, s], -1)


def project(points3d, intrinsics):
  """Pinhole projection of (..., J, 3) camera-space points to (..., J, 2) pixels."""
  homogeneous = jnp.einsum("...ij,...kj->...ki", intrinsics, points3d)
  return homogeneous[..., :2] / homogeneous[..., 2:3]
