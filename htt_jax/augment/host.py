"""The augmentation's ops in TF, run by the tf.data reader on whole clips (T, H, W, 3) uint8.

The order of the ops is described in htt_jax/augment/__init__.py; their random parameters are
drawn by params.py (`augment_clip` draws, then applies). Every op reproduces Pillow's arithmetic
(PIL is what the reference calls), bit for bit except for rare blur ties:
- ImageEnhance.Brightness / Color / Contrast are Image.blend(degenerate, image, f) =
  trunc(deg + f * (image - deg)) in float32, clipped to [0, 255]; Color's degenerate is the L image
  (ITU-R 601-2 in fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16); Contrast's is the
  constant int(mean(L) + 0.5).
- hue (torchvision-style adjust_hue): RGB -> HSV (Pillow's Convert.c, uint8 H, S, V), H shifted by
  trunc(h * 255) mod 256 with wrap-around (reference.md §6.16), HSV -> RGB. The two conversions are
  exact lookup tables built once per process with numpy replaying Pillow's float/double arithmetic.
- GaussianBlur(radius) is Pillow's: 3 passes of an "extended box" blur per axis (horizontal
  passes, then vertical), box radius from _gaussian_blur_radius, 24-bit fixed-point weights,
  rounding to uint8 after every pass, edges replicated. Per-frame kernels run as one depthwise
  convolution with frames folded into channels; its float32 sums differ from Pillow's integer
  ones only within ~1e-5 of a rounding tie (< 1% of pixels off by 1 at radius < 0.5).
"""

import tensorflow as tf

from htt_jax.augment import AugmentConfig, BRIGHTNESS, CONTRAST, HUE, NUM_COLOR_OPS, SATURATION
from htt_jax.augment import params as params_lib
from htt_jax.augment import pillow_hsv


# ---------------------------------------------------------------------------------------------
# Colour ops on (N, H, W, 3) uint8 -> uint8 (float32 inside, as Pillow computes in float).

def luminance(x):
  """Pillow's RGB -> L of float32 x: (19595 R + 38470 G + 7471 B + 2^15) >> 16, (N, H, W, 1).

  Every partial sum is an integer below 2^24, so float32 (and any summation order) is exact.
  """
  weights = tf.constant([[19595.0], [38470.0], [7471.0]])
  weighted = tf.reshape(tf.linalg.matmul(tf.reshape(x, [-1, 3]), weights),
                        tf.concat([tf.shape(x)[:-1], [1]], 0))
  return tf.floor((weighted + 32768.0) * (1.0 / 65536.0))


def mean_level(gray):
  """int(mean + 0.5) of each frame's L image (ImageEnhance.Contrast), (N, 1, 1, 1); exact ints."""
  total = tf.reduce_sum(tf.cast(gray, tf.int32), axis=[1, 2, 3], keepdims=True)
  count = tf.reduce_prod(tf.shape(gray)[1:])
  return tf.cast((2 * total + count) // (2 * count), tf.float32)


def blend(degenerate, image, factor):
  """Image.blend(degenerate, image, factor): float32 deg + f * (img - deg), clipped, truncated
  (the uint8 cast truncates like C's)."""
  return tf.cast(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0),
                 tf.uint8)


def adjust_brightness(x, factor):
  """ImageEnhance.Brightness: blend with black; 0 + f * (x - 0) is f * x exactly."""
  return tf.cast(tf.clip_by_value(factor * tf.cast(x, tf.float32), 0.0, 255.0), tf.uint8)


def adjust_saturation(x, factor):
  """ImageEnhance.Color: blend with the L image."""
  x = tf.cast(x, tf.float32)
  return blend(luminance(x), x, factor)


def adjust_contrast(x, factor):
  """ImageEnhance.Contrast: blend with the frame's mean L level."""
  x = tf.cast(x, tf.float32)
  return blend(mean_level(luminance(x)), x, factor)


_TABLES = None


def hsv_tables():
  """The tables as eager tensors, built once per process (~1 s; 66 MB)."""
  global _TABLES
  if _TABLES is None:
    with tf.init_scope():  # Eager even when first called while tracing a tf.data function.
      _TABLES = tuple(tf.constant(t) for t in pillow_hsv.build_tables())
  return _TABLES


def adjust_hue(x, hue_factor):
  """RGB -> HSV -> H + shift (mod 256) -> RGB, exactly as Pillow computes it; uint8 -> uint8."""
  h_of_rgb, s_of_maxmin, rgb_of_hsv = hsv_tables()
  xi = tf.cast(x, tf.int32)
  r, g, b = xi[..., 0], xi[..., 1], xi[..., 2]
  maxc = tf.maximum(r, tf.maximum(g, b))
  minc = tf.minimum(r, tf.minimum(g, b))
  h = tf.cast(tf.gather(h_of_rgb, r * 65536 + g * 256 + b), tf.int32)
  s = tf.cast(tf.gather(s_of_maxmin, maxc * 256 + minc), tf.int32)
  h = tf.bitwise.bitwise_and(h + params_lib.hue_shift(hue_factor), 255)
  return tf.gather(rgb_of_hsv, h * 65536 + s * 256 + maxc)


def color_jitter(x, order, brightness, saturation, contrast, hue, hue_enabled=True):
  """The four ops on (N, H, W, 3) uint8 with per-clip factors, frame n in the order order[n].

  Four rounds: round k partitions the frames by the op they draw, order[n, k], and applies each
  op to its share only, so every frame pays for each op exactly once (hue is the costly one).
  """
  num = tf.shape(x)[0]
  for k in range(NUM_COLOR_OPS):
    op = order[:, k]
    parts = tf.dynamic_partition(x, op, NUM_COLOR_OPS)
    where = tf.dynamic_partition(tf.range(num), op, NUM_COLOR_OPS)
    parts[BRIGHTNESS] = adjust_brightness(parts[BRIGHTNESS], brightness)
    parts[SATURATION] = adjust_saturation(parts[SATURATION], saturation)
    parts[CONTRAST] = adjust_contrast(parts[CONTRAST], contrast)
    if hue_enabled:  # The reference skips the op (and its lossy HSV round trip) when hue = 0.
      parts[HUE] = adjust_hue(parts[HUE], hue)
    x = tf.reshape(tf.dynamic_stitch(where, parts), tf.shape(x))
  return x


# ---------------------------------------------------------------------------------------------
# Blur.

def _pad_edges(y, width: int, axis: int):
  """Repeats the edge pixels `width` times along `axis` (Pillow's box blur extends the edges).

  gather + concat: measured faster than tf.pad(mode='SYMMETRIC') for one pixel.
  """
  first = tf.gather(y, [0] * width, axis=axis)
  last = tf.gather(y, tf.fill([width], tf.shape(y)[axis] - 1), axis=axis)
  return tf.concat([first, y, last], axis=axis)


def gaussian_blur(x, radius, max_radius: float = 0.5):
  """ImageFilter.GaussianBlur(radius[n]) on each frame n of x (N, H, W, 3) uint8 -> uint8.

  The fixed-point sums are evaluated in float32 (exact weights, rounded products): where the
  exact sum lies within ~1e-5 of a rounding tie, a pixel can differ from Pillow's by 1 per pass.
  """
  num, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
  kernels = params_lib.blur_kernels(radius, max_radius)  # (N, 2K+1)
  big_k = (kernels.shape[1] - 1) // 2
  # Frames and colours become the channels of one image: one depthwise conv per pass.
  y = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, num * 3])
  y = tf.cast(y, tf.float32)
  per_channel = tf.transpose(tf.repeat(kernels, 3, axis=0))  # (2K+1, 3N)
  for axis, shape in ((2, [1, -1, num * 3, 1]), (1, [-1, 1, num * 3, 1])):
    kernel = tf.reshape(per_channel, shape)
    for _ in range(3):
      padded = _pad_edges(y, big_k, axis)
      y = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")
      y = tf.floor(y + 0.5)  # (bulk + 2^23) >> 24: back to uint8 after every pass.
  y = tf.reshape(tf.cast(y, tf.uint8), [height, width, num, 3])
  return tf.transpose(y, [2, 0, 1, 3])


# ---------------------------------------------------------------------------------------------
# Geometry and the whole clip.

def translate_images(images, offset):
  """out[y, x] = in[y + oy, x + ox], black outside: PIL AFFINE + NEAREST of an integer shift."""
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  ox, oy = offset[0], offset[1]
  x0, x1 = tf.clip_by_value(ox, 0, width), tf.clip_by_value(width + ox, 0, width)
  y0, y1 = tf.clip_by_value(oy, 0, height), tf.clip_by_value(height + oy, 0, height)
  kept = images[:, y0:y1, x0:x1]
  top, left = tf.clip_by_value(-oy, 0, height), tf.clip_by_value(-ox, 0, width)
  paddings = [[0, 0], [top, height - top - (y1 - y0)], [left, width - left - (x1 - x0)], [0, 0]]
  return tf.pad(kept, paddings)


def translation_matrix(offset):
  """A = [[1, 0, -ox], [0, 1, -oy], [0, 0, 1]]: the reference's affine at scale 480, rot 0."""
  o = tf.cast(offset, tf.float32)
  return tf.stack([tf.stack([1.0, 0.0, -o[0]]), tf.stack([0.0, 1.0, -o[1]]),
                   tf.constant([0.0, 0.0, 1.0])])


def photometric(images, params, config: AugmentConfig = AugmentConfig()):
  """Blur then colour jitter on (T, H, W, 3) uint8, in chunks of frames (memory), -> uint8."""
  if not config.photometric:  # All amounts 0: the ops would return the images unchanged.
    return images

  def run(args):
    x, radius, order = args
    if config.blur_radius > 0:
      x = gaussian_blur(x, radius, config.blur_radius)
    return color_jitter(x, order, params["brightness"], params["saturation"],
                        params["contrast"], params["hue"], hue_enabled=config.hue > 0)

  num = images.shape[0]
  chunk = config.chunk_frames
  if num is None or num <= chunk or num % chunk:
    return run((images, params["blur_radius"], params["order"]))
  split = lambda a: tf.reshape(a, [num // chunk, chunk] + a.shape[1:].as_list())
  out = tf.map_fn(run, (split(images), split(params["blur_radius"]), split(params["order"])),
                  fn_output_signature=tf.TensorSpec([chunk] + images.shape[1:].as_list(),
                                                    tf.uint8),
                  parallel_iterations=1)
  return tf.reshape(out, [num] + images.shape[1:].as_list())


def apply_geometry(clip, params):
  """The translation's effect on the labels: intrinsics (T,3,3) and any of joints2d (T,J,2),
  joints25d (T,J,3) (u, v moved by -offset; depth and 3D unchanged). The image is left alone."""
  out = dict(clip)
  matrix = translation_matrix(params["offset"])
  # K_aug = A K (reference.md §3.7): cx, cy move with the image, so back-projection
  # stays consistent.
  out["intrinsics"] = tf.linalg.matmul(matrix, tf.cast(clip["intrinsics"], tf.float32))
  shift = tf.cast(params["offset"], tf.float32)
  if "joints2d" in clip:
    out["joints2d"] = tf.cast(clip["joints2d"], tf.float32) - shift
  if "joints25d" in clip:
    j = tf.cast(clip["joints25d"], tf.float32)
    out["joints25d"] = tf.concat([j[..., :2] - shift, j[..., 2:]], axis=-1)
  return out


def apply_params(clip, params, config: AugmentConfig = AugmentConfig()):
  """Applies drawn params to a clip dict: image (T,H,W,3) uint8 (photometric, then the shift) and
  the geometry (apply_geometry)."""
  out = apply_geometry(clip, params)
  out["image"] = translate_images(photometric(clip["image"], params, config), params["offset"])
  return out


def augment_clip(clip, key, config: AugmentConfig = AugmentConfig()):
  """The reference's training augmentation of one clip, keyed by `key` ((2,) int seed).

  With config.on_device only the geometry is applied; the clip gains the aug_* params."""
  shape = tf.shape(clip["image"])
  width = clip["image"].shape[2] or shape[2]
  params = params_lib.sample_params(key, shape[0], width, config)
  if config.on_device:
    out = apply_geometry(clip, params)
    out.update(params_lib.device_params(params, config))
    return out
  return apply_params(clip, params, config)
