"""HTT: ResNet-18 per frame -> pose block P over windows of t -> pose/object heads -> action block A.

reference.md §0 and §1.4-1.8. Shapes: B clips of T frames; J joints; n_o objects; n_a actions;
d = 512. Every frame of a clip goes through the backbone at once (B*T images), and P runs on all
B*T/t windows at once: there is no Python loop over frames or windows.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from htt_jax import cpu_flags, geometry
from htt_jax.models import initializers
from htt_jax.models.resnet import ResNet18
from htt_jax.models.transformer import TransformerEncoder, sinusoidal_encoding


def normalize_images(images):
  """uint8 pixels -> x/255 - 0.5 (the reference's normalisation, std 1: reference.md §1.1);
  floats pass."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0 - 0.5
  return images


class PoseBlock(nn.Module):
  """P: the encoder over non-overlapping windows of `window` frames; positions restart per window."""
  window: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, not_padding):
    """features (B, T, d), not_padding (B, T) -> tokens (B, T, d), attention (L, B*T/t, t, t)."""
    batch, frames, dim = features.shape
    windows = features.reshape(batch * frames // self.window, self.window, dim)
    valid = not_padding.reshape(-1, self.window) > 0
    # The first token of every window is always a valid key, so that a window made only of padding
    # cannot give a softmax over nothing (NaN); its outputs carry no loss weight
    # anyway (reference.md §1.4).
    valid = valid.at[:, 0].set(True)
    pos = sinusoidal_encoding(self.window, dim)
    tokens, attention = TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim,
                                           dtype=self.dtype, name="encoder")(windows, pos, ~valid)
    return tokens.reshape(batch, frames, dim), attention


class ActionBlock(nn.Module):
  """A: the learned action token at position 0, then the T frame tokens at positions 1..T."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, not_padding):
    """tokens (B, T, d), not_padding (B, T) -> all output tokens (B, T+1, d), attention."""
    batch, frames, dim = tokens.shape
    action_token = self.param("action_token", nn.initializers.normal(1.0), (1, 1, dim))
    x = jnp.concatenate([jnp.broadcast_to(action_token, (batch, 1, dim)).astype(tokens.dtype),
                         tokens], axis=1)
    ignored = jnp.concatenate([jnp.zeros((batch, 1), bool), not_padding <= 0], axis=1)
    pos = sinusoidal_encoding(frames + 1, dim)
    return TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim, dtype=self.dtype,
                              name="encoder")(x, pos, ignored)


class HTT(nn.Module):
  """The Hierarchical Temporal Transformer.

  Call with images (B, T, H, W, 3) (uint8, or float32 already normalised as x/255 - 0.5),
  intrinsics (B, T, 3, 3) of those images, not_padding (B, T). Returns a dict of float32 arrays:
    features (B,T,512) ResNet; pose_tokens (B,T,d) P output; raw_pose (B,T,J,3) MLP output (a,b,s);
    joints2d (B,T,J,2) px; depth (B,T,J) m; joints3d (B,T,J,3) m camera space;
    object_logits / object_probs (B,T,n_o); action_inputs (B,T,d) fused tokens;
    action_tokens (B,T+1,d) A output; action_logits / action_probs (B,n_a);
    with `return_attention=True` also pose_attention (L,B*T/t,t,t), action_attention (L,B,T+1,T+1),
    averaged over heads.
  Parameters are float32; `dtype` is the compute dtype (bfloat16 on accelerators).
  P runs at the backbone's width (512); `hidden_dim` (d) is the width of the heads and of A. The
  reference has d = 512, where the two coincide; a smaller d gives cheaper test models.
  """
  num_joints: int
  num_objects: int
  num_actions: int
  window: int = 16
  hidden_dim: int = 512
  num_heads: int = 8
  mlp_dim: int = 2048
  num_layers_pose: int = 2
  num_layers_action: int = 2
  dtype: Any = jnp.float32
  remat: bool = False
  calibrate_batch_norm: bool = False  # See ResNet18; never set while training.
  batch_norm: str = "frozen"  # See ResNet18: 'frozen' (the reference) | 'batch'.
  batch_norm_momentum: float = 0.9
  fold_batch_norm: bool = True  # See ResNet18.
  batch_norm_axis_name: Optional[str] = None  # The pmap axis, for batch statistics across devices.
  cpu_kernels: bool = False  # XLA:CPU's workarounds in the backbone (ResNet18; build_model sets it).

  @nn.compact
  def __call__(self, images, intrinsics, not_padding, return_attention: bool = False,
               train: bool = False):
    batch, frames, height, width, channels = images.shape
    if frames % self.window:
      raise ValueError(f"clip length T={frames} is not a multiple of the window t={self.window}")
    d, n = self.hidden_dim, batch * frames
    # Linear layers initialised like torch.nn.Linear, whose bias bound needs the input width.
    dense = lambda features, name, x: initializers.torch_dense(
        features, x.shape[-1], dtype=self.dtype, name=name)(x)
    not_padding = jnp.asarray(not_padding, jnp.float32)

    x = normalize_images(images).astype(self.dtype).reshape(n, height, width, channels)
    features = ResNet18(dtype=self.dtype, remat=self.remat,
                        calibrate_batch_norm=self.calibrate_batch_norm,
                        batch_norm=self.batch_norm, batch_norm_momentum=self.batch_norm_momentum,
                        fold_batch_norm=self.fold_batch_norm,
                        batch_norm_axis_name=self.batch_norm_axis_name,
                        cpu_kernels=self.cpu_kernels, name="backbone")(x, train)
    features = features.reshape(batch, frames, -1)

    pose_tokens, pose_attention = PoseBlock(
        self.window, self.num_layers_pose, self.num_heads, self.mlp_dim, dtype=self.dtype,
        name="pose_block")(features, not_padding)

    # Hand pose: MLP_1 [d, d, 3J] with LeakyReLU(0.01); outputs are joint-major (a, b, s) triplets.
    h = nn.leaky_relu(dense(d, "pose_mlp_0", pose_tokens), 0.01)
    h = nn.leaky_relu(dense(d, "pose_mlp_1", h), 0.01)
    raw_pose = dense(3 * self.num_joints, "pose_mlp_2", h).astype(jnp.float32)
    raw_pose = raw_pose.reshape(batch, frames, self.num_joints, 3)
    joints2d, depth, joints3d = geometry.to_25d(raw_pose, intrinsics.astype(jnp.float32),
                                                (height, width))

    # Object: two linears with no activation between them (reference.md §6.2).
    object_logits = dense(self.num_objects, "object_classifier",
                          dense(d, "object_embed", pose_tokens)).astype(jnp.float32)
    object_probs = jax.nn.softmax(object_logits, axis=-1)

    # Fusion, in the code's order [g, FC2(raw 2D), FC3(object probs)] (reference.md §6.1),
    # all affine.
    pose_feature = dense(d, "pose_to_action",
                         raw_pose[..., :2].reshape(batch, frames, 2 * self.num_joints))
    object_feature = dense(d, "object_to_action", object_probs)
    action_inputs = dense(d, "fuse_to_action", jnp.concatenate(
        [pose_tokens.astype(self.dtype), pose_feature.astype(self.dtype),
         object_feature.astype(self.dtype)], axis=-1))

    action_tokens, action_attention = ActionBlock(
        self.num_layers_action, self.num_heads, self.mlp_dim, dtype=self.dtype,
        name="action_block")(action_inputs, not_padding)
    action_logits = dense(self.num_actions, "action_classifier",
                          action_tokens[:, 0]).astype(jnp.float32)

    outputs = dict(
        features=features,
        pose_tokens=pose_tokens.astype(jnp.float32),
        raw_pose=raw_pose,
        joints2d=joints2d,
        depth=depth,
        joints3d=joints3d,
        object_logits=object_logits,
        object_probs=object_probs,
        action_inputs=action_inputs.astype(jnp.float32),
        action_tokens=action_tokens.astype(jnp.float32),
        action_logits=action_logits,
        action_probs=jax.nn.softmax(action_logits, axis=-1),
    )
    if return_attention:
      outputs["pose_attention"] = pose_attention
      outputs["action_attention"] = action_attention
    return outputs


def build_model(config, cpu_kernels: Optional[bool] = None) -> HTT:
  """The HTT of a config (`config.model.*`, `config.dtype`).

  `cpu_kernels` (XLA:CPU's workarounds, models/resnet.py) defaults to whether JAX's default backend
  is the CPU, decided here once rather than while tracing; pass it to build for another backend.
  bfloat16 on the CPU needs XLA:CPU's YNNPACK fusions off (cpu_flags.py): a warning says so when
  XLA_FLAGS leaves them on.
  """
  m = config.model
  on_cpu = jax.default_backend() == "cpu"
  if config.dtype == "bfloat16" and on_cpu:
    cpu_flags.warn_if_unsafe_for_bfloat16()
  return HTT(
      num_joints=m.num_joints, num_objects=m.num_objects, num_actions=m.num_actions,
      window=m.window, hidden_dim=m.hidden_dim, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      num_layers_pose=m.num_layers_pose, num_layers_action=m.num_layers_action,
      dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32, remat=m.remat,
      batch_norm=m.get("batch_norm", "frozen"), batch_norm_momentum=m.get("batch_norm_momentum", 0.9),
      fold_batch_norm=m.get("fold_batch_norm", True),
      cpu_kernels=on_cpu if cpu_kernels is None else cpu_kernels)


def init_variables(model, rng, config):
  """Model variables for the config's image size. Parameters never depend on T, so one window of
  frames suffices; under jit XLA drops the forward pass and only the initialisers run."""
  height, width = config.dataset.image_size
  t = config.model.window
  images = jnp.zeros((1, t, height, width, 3), jnp.uint8)
  intrinsics = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (1, t, 3, 3))
  return model.init(rng, images, intrinsics, jnp.ones((1, t), jnp.float32))
