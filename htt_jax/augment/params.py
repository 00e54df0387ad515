"""The random parameters of a clip's augmentation: drawn once, here, for both paths.

The tf.data reader draws them (`sample_params`) from a stateless key, so a clip's augmentation
depends only on its key (the input pipeline derives it from the seed and the clip's place in the
epoch). The host path applies them at once (host.apply_params); with augment.on_device the reader
hands them to the training step in integer form (`device_params`, applied by device.py). The two
conversions that define Pillow's arithmetic for a draw live here too, used by both paths: the hue
factor's integer shift (`hue_shift`) and the blur radius's fixed-point box taps (`blur_kernels`).
"""

import math

import tensorflow as tf

from htt_jax.augment import AugmentConfig, NUM_COLOR_OPS


def fold_key(key, *data):
  """A new (2,) int64 key from `key` and integers (stateless; order matters)."""
  key = tf.cast(key, tf.int64)
  for d in data:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
  return key


def sample_params(key, num_frames, width, config: AugmentConfig = AugmentConfig()):
  """The random draws of one clip (inspectable; `host.apply_params` applies them).

  Returns offset (2,) int32 (x, y), brightness, saturation, contrast, hue () float32 (per clip),
  blur_radius (T,) float32 and order (T, 4) int32 (op ids per round; per frame).
  """
  keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), 4)
  jitter = tf.random.stateless_uniform([2], keys[0], -1.0, 1.0, dtype=tf.float64)
  # The reference scales by the crop size 480 (= the width) for both axes and truncates with
  # astype(int): offsets in (-0.1 W, 0.1 W), 0 twice as likely (reference.md §3.7, §6.16).
  offset = tf.cast(config.center_jittering * tf.cast(width, tf.float64) * jitter, tf.int32)
  u = tf.random.stateless_uniform([4], keys[1], dtype=tf.float64)

  def factor(amount, ui):  # random.uniform(max(0, 1 - a), 1 + a); 1 (identity) when disabled.
    low = max(0.0, 1.0 - amount)
    return tf.cast(low + (1.0 + amount - low) * ui if amount > 0 else tf.ones_like(ui), tf.float32)

  hue = tf.cast(-config.hue + 2.0 * config.hue * u[3], tf.float32)
  radius = tf.random.stateless_uniform([num_frames], keys[2]) * config.blur_radius
  order = tf.argsort(tf.random.stateless_uniform([num_frames, NUM_COLOR_OPS], keys[3]), axis=1)
  return {"offset": offset, "brightness": factor(config.brightness, u[0]),
          "saturation": factor(config.saturation, u[1]), "contrast": factor(config.contrast, u[2]),
          "hue": hue, "blur_radius": radius, "order": tf.cast(order, tf.int32)}


def hue_shift(hue_factor):
  """The H shift: trunc(h * 255) mod 256 (reference.md §6.16: the reference's uint8
  cast, wrapped)."""
  return tf.math.floormod(tf.cast(tf.cast(hue_factor, tf.float64) * 255.0, tf.int32), 256)


def _box_radius(radius):
  """Pillow's _gaussian_blur_radius(radius, passes=3) (float32 as in C)."""
  sigma2 = radius * radius / 3.0
  big_l = tf.cast(tf.sqrt(12.0 * tf.cast(sigma2, tf.float64) + 1.0), tf.float32)
  small_l = tf.floor((big_l - 1.0) / 2.0)
  a = (2.0 * small_l + 1.0) * (small_l * (small_l + 1.0) - 3.0 * sigma2)
  a = a / (6.0 * (sigma2 - (small_l + 1.0) * (small_l + 1.0)))
  return small_l + a


def blur_kernels(radius, max_radius: float):
  """Per-frame 1-D kernels (N, 2K+1) of one box pass: ww over the 2l+1 centre taps, fw at +-(l+1).

  ww = trunc(2^24 / (2 r + 1)), fw = (2^24 - (2l+1) ww) // 2 (BoxBlur.c), divided by 2^24.
  K = 1 + the largest integer box radius max_radius can give.
  """
  sigma2 = max_radius * max_radius / 3.0  # Static K: the same formula in Python.
  big_k = 1 + math.floor((math.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0)
  box = _box_radius(tf.cast(radius, tf.float32))
  whole = tf.minimum(tf.cast(box, tf.int32), big_k - 1)
  ww = tf.cast(tf.cast(2.0 ** 24, tf.float32) / (box * 2.0 + 1.0), tf.int64)
  fw = (2 ** 24 - tf.cast(2 * whole + 1, tf.int64) * ww) // 2
  taps = tf.abs(tf.range(-big_k, big_k + 1))[None, :]
  weights = tf.where(taps <= whole[:, None], ww[:, None],
                     tf.where(taps == whole[:, None] + 1, fw[:, None], 0))
  return tf.cast(weights, tf.float32) * (1.0 / 2.0 ** 24)


def device_params(params, config: AugmentConfig = AugmentConfig()):
  """The drawn params in the form device.py applies them (the DEVICE_PARAM_KEYS): the hue shift as
  an integer, the blur as integer fixed-point taps (identity when blur is off)."""
  num = tf.shape(params["blur_radius"])[0]
  if config.blur_radius > 0:
    taps = tf.cast(tf.round(blur_kernels(params["blur_radius"], config.blur_radius) * 2.0 ** 24),
                   tf.int32)
  else:
    taps = tf.tile(tf.constant([[0, 2 ** 24, 0]], tf.int32), [num, 1])
  return {"aug_offset": tf.cast(params["offset"], tf.int32),
          "aug_brightness": params["brightness"], "aug_saturation": params["saturation"],
          "aug_contrast": params["contrast"], "aug_hue_shift": hue_shift(params["hue"]),
          "aug_blur_weights": taps, "aug_order": params["order"]}
