"""The reference's photometric augmentation and image shift in JAX, run inside the training step.

With `config.dataset.augment.on_device=True` the tf.data reader only decodes the frames and draws a
clip's random parameters (params.device_params); the pixels are blurred, colour-jittered and
shifted here, on the accelerator, as part of the compiled step. Decoding is then the host's only
per-pixel work, an order of magnitude cheaper than the photometric ops in TF on the host, which is
what lets a few CPU cores feed a GPU (the costs: docs/benchmarks.md, "Input pipeline").

Same arithmetic as host.py (Pillow's, reference.md §3.7), per clip:
- Gaussian blur (3 box passes per axis, horizontal first, edges replicated) in Pillow's own 24-bit
  fixed point with uint32 sums, so it is bit-exact to Pillow (the TF version's float32 sums can be
  1 off near rounding ties);
- the four colour ops in float32 as Pillow computes them, in the per-frame random order: every
  round evaluates the four ops and keeps, for each frame, the one that frame drew (select, so the
  program has static shapes); hue through the same exact HSV tables (pillow_hsv.py);
- then the integer translation with black fill.
Geometry (intrinsics, 2D joints) was already shifted on the host. The params arrive as the batch
keys DEVICE_PARAM_KEYS (htt_jax/augment/__init__.py), B leading.
"""

import functools
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from htt_jax.augment import BRIGHTNESS, CONTRAST, DEVICE_PARAM_KEYS, HUE, NUM_COLOR_OPS, SATURATION
from htt_jax.augment import pillow_hsv


@functools.lru_cache(maxsize=None)
def _tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pillow's HSV tables (66 MB), built once per process; constants of the compiled step."""
  return pillow_hsv.build_tables()


def luminance(x):
  """Pillow's L of float32 RGB (..., 3): (19595 R + 38470 G + 7471 B + 2^15) >> 16, (...).

  Elementwise, not a matrix product: every partial sum is an integer below 2^24, exact in float32,
  whereas a GPU matrix product may round its inputs (TF32)."""
  weighted = x[..., 0] * 19595.0 + x[..., 1] * 38470.0 + x[..., 2] * 7471.0
  return jnp.floor((weighted + 32768.0) * (1.0 / 65536.0))


def mean_level(gray):
  """int(mean + 0.5) of each frame's L image (T, H, W) -> (T,), in exact integers."""
  total = jnp.sum(gray.astype(jnp.int32), axis=(1, 2))
  count = gray.shape[1] * gray.shape[2]
  return ((2 * total + count) // (2 * count)).astype(jnp.float32)


def blend(degenerate, image, factor):
  """Image.blend: float32 deg + f * (img - deg), clipped to [0, 255], truncated to uint8."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 255.0).astype(jnp.uint8)


def adjust_hue(x, shift, tables=None):
  """RGB -> HSV -> H + shift (mod 256) -> RGB with Pillow's tables; uint8 (..., 3) -> uint8."""
  h_of_rgb, s_of_maxmin, rgb_of_hsv = tables or (jnp.asarray(t) for t in _tables())
  xi = x.astype(jnp.int32)
  r, g, b = xi[..., 0], xi[..., 1], xi[..., 2]
  maxc = jnp.maximum(r, jnp.maximum(g, b))
  minc = jnp.minimum(r, jnp.minimum(g, b))
  h = jnp.take(h_of_rgb, r * 65536 + g * 256 + b, mode="clip").astype(jnp.int32)
  s = jnp.take(s_of_maxmin, maxc * 256 + minc, mode="clip").astype(jnp.int32)
  h = jnp.bitwise_and(h + shift, 255)
  # Materialised once: fused into the last gather, the first two would run again per channel.
  index = lax.optimization_barrier(h * 65536 + s * 256 + maxc)
  return jnp.take(rgb_of_hsv, index, axis=0, mode="clip")


def color_jitter(x, order, brightness, saturation, contrast, hue_shift, hue_enabled: bool):
  """The four ops on one clip (T, H, W, 3) uint8, frame n in the order order[n] (T, 4)."""
  tables = tuple(jnp.asarray(t) for t in _tables()) if hue_enabled else None  # once per program
  for k in range(NUM_COLOR_OPS):
    op = order[:, k][:, None, None, None]
    xf = x.astype(jnp.float32)
    gray = luminance(xf)
    candidates = {
        BRIGHTNESS: jnp.clip(brightness * xf, 0.0, 255.0).astype(jnp.uint8),
        SATURATION: blend(gray[..., None], xf, saturation),
        CONTRAST: blend(mean_level(gray)[:, None, None, None], xf, contrast),
        # The reference skips the op (and its lossy HSV round trip) when hue = 0.
        HUE: adjust_hue(x, hue_shift, tables) if hue_enabled else x,
    }
    # Each round's frames materialised: fusing the rounds recomputes the earlier ones for every
    # channel the next reads (several times slower on CPU with four hue rounds).
    x = lax.optimization_barrier(jnp.select([op == i for i in range(NUM_COLOR_OPS)],
                                            [candidates[i] for i in range(NUM_COLOR_OPS)]))
  return x


def gaussian_blur(x, weights):
  """Pillow's GaussianBlur on one clip (T, H, W, 3) uint8 with per-frame taps (T, 2K+1) int32.

  Each pass: sum of weight * pixel over the 2K+1 taps in uint32 (at most 255 * 2^24 < 2^32), then
  (sum + 2^23) >> 24, as BoxBlur.c; three horizontal passes, then three vertical ones."""
  big_k = (weights.shape[1] - 1) // 2
  w = weights.astype(jnp.uint32)
  y = x.astype(jnp.uint32)
  for axis in (2, 1):
    size = y.shape[axis]
    pad = [(0, 0)] * 4
    pad[axis] = (big_k, big_k)
    for _ in range(3):
      padded = jnp.pad(y, pad, mode="edge")
      total = jnp.zeros_like(y)
      for j in range(2 * big_k + 1):
        tap = lax.slice_in_dim(padded, j, j + size, axis=axis)
        total = total + w[:, j, None, None, None] * tap
      y = (total + (1 << 23)) >> 24
  return y.astype(jnp.uint8)


def translate(x, offset):
  """out[:, y, x] = in[:, y + oy, x + ox], black outside (PIL AFFINE + NEAREST of a shift)."""
  height, width = x.shape[1], x.shape[2]
  rows = jnp.arange(height) + offset[1]
  cols = jnp.arange(width) + offset[0]
  inside = (((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :])
  moved = jnp.take(jnp.take(x, jnp.clip(rows, 0, height - 1), axis=1),
                   jnp.clip(cols, 0, width - 1), axis=2)
  return jnp.where(inside[None, :, :, None], moved, jnp.zeros((), x.dtype))


def augment_clip(images, params: Dict[str, jax.Array], hue_enabled: bool = True):
  """Blur, colour jitter, then shift of one clip (T, H, W, 3) uint8 with its drawn params."""
  x = gaussian_blur(images, params["aug_blur_weights"])
  x = color_jitter(x, params["aug_order"], params["aug_brightness"], params["aug_saturation"],
                   params["aug_contrast"], params["aug_hue_shift"], hue_enabled)
  return translate(x, params["aug_offset"])


def augment_batch(batch, hue_enabled: bool = True):
  """batch['image'] (B, T, H, W, 3) augmented with the batch's aug_* params (vmapped over B)."""
  params = {k: batch[k] for k in DEVICE_PARAM_KEYS}
  return jax.vmap(functools.partial(augment_clip, hue_enabled=hue_enabled))(batch["image"], params)


def has_params(batch) -> bool:
  """Whether the reader left the photometric augmentation to the step (augment.on_device)."""
  return all(k in batch for k in DEVICE_PARAM_KEYS)
