"""The reference's pre-norm transformer encoder (reference.md §1.2, §1.3).

DETR-style: the fixed sine/cosine encoding is added to the queries and keys of every layer, never to
the values or the residual stream. Key-padding masks use PyTorch's convention (True = ignored key).
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from htt_jax.models import initializers


def sinusoidal_encoding(length: int, dim: int) -> np.ndarray:
  """(length, dim) table: even channels sin(p * w_i), odd channels cos(p * w_i).

  w_i = exp(-(2i) ln(10000) / dim), computed in float32 like the reference's buffer.
  """
  position = np.arange(length, dtype=np.float32)[:, None]
  rates = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / dim))
  angles = (position * rates.astype(np.float32)).astype(np.float32)
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return table


class MultiHeadSelfAttention(nn.Module):
  """`torch.nn.MultiheadAttention` with q = k = x + pos and v = x.

  The q/k/v projection is ONE (d, 3d) matrix, as in PyTorch, so that xavier initialisation sees the
  fused 512x1536 shape (reference.md §1.3) and checkpoints map one-to-one.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, mask):
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    in_kernel = self.param("in_proj_kernel", initializers.xavier_uniform, (dim, 3 * dim))
    in_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * dim,))
    in_kernel, in_bias = in_kernel.astype(self.dtype), in_bias.astype(self.dtype)
    # Queries and keys share their input (x + pos), so they take one matmul.
    qk = (x + pos) @ in_kernel[:, :2 * dim] + in_bias[:2 * dim]
    v = x @ in_kernel[:, 2 * dim:] + in_bias[2 * dim:]
    q, k = jnp.split(qk, 2, axis=-1)
    split = lambda t: t.reshape(batch, length, self.num_heads, head_dim)
    q, k, v = split(q), split(k), split(v)
    scores = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :], -jnp.inf, scores)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhc->bqhc", weights.astype(self.dtype), v).reshape(batch, length, dim)
    out = nn.Dense(dim, kernel_init=initializers.xavier_uniform, bias_init=nn.initializers.zeros,
                   dtype=self.dtype, name="out_proj")(out)
    return out, weights.mean(axis=1)


class EncoderLayer(nn.Module):
  """Pre-norm layer: x += MHA(LN1(x)); x += W2 relu(W1 LN2(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, mask):
    dim = x.shape[-1]
    layer_norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    attended, weights = MultiHeadSelfAttention(self.num_heads, dtype=self.dtype, name="self_attn")(
        layer_norm("norm1")(x), pos, mask)
    x = x + attended
    y = layer_norm("norm2")(x)
    y = initializers.torch_dense(self.mlp_dim, dim, kernel_init=initializers.xavier_uniform,
                                 dtype=self.dtype, name="linear1")(y)
    y = initializers.torch_dense(dim, self.mlp_dim, kernel_init=initializers.xavier_uniform,
                                 dtype=self.dtype, name="linear2")(nn.relu(y))
    return x + y, weights


class TransformerEncoder(nn.Module):
  """A stack of pre-norm layers and the final LayerNorm; returns (tokens, per-layer attention).

  x: (batch, length, d); pos: (length, d); mask: (batch, length) bool, True = ignored key.
  Attention weights are averaged over heads, stacked as (layers, batch, length, length).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos, mask):
    x = x.astype(self.dtype)
    pos = jnp.asarray(pos, self.dtype)
    all_weights = []
    for i in range(self.num_layers):
      x, weights = EncoderLayer(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"layers_{i}")(
          x, pos, mask)
      all_weights.append(weights)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    return x, jnp.stack(all_weights)
