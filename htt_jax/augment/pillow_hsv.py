"""Pillow's RGB <-> HSV conversions (Convert.c) as exact uint8 lookup tables, in numpy.

Shared by the tf.data augmentation (host.py) and the on-accelerator one (device.py), so both shift
hue exactly as the reference's PIL calls do.
"""

import numpy as np


def build_tables():
  """numpy lookup tables replaying Pillow's Convert.c rgb2hsv / hsv2rgb (float vs double as there).

  Returns h_of_rgb (2^24,) indexed r<<16|g<<8|b, s_of_maxmin (2^16,) indexed max<<8|min,
  rgb_of_hsv (2^24, 3) indexed h<<16|s<<8|v; all uint8.
  """
  f32, f64 = np.float32, np.float64
  gb = np.arange(1 << 16)
  g, b = (gb >> 8).astype(np.int32), (gb & 255).astype(np.int32)
  h_of_rgb = np.empty((256, 1 << 16), np.uint8)
  for r in range(256):
    maxc, minc = np.maximum(r, np.maximum(g, b)), np.minimum(r, np.minimum(g, b))
    cr = (maxc - minc).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
      rc, gc, bc = [((maxc - c).astype(f32) / cr).astype(f32) for c in (r, g, b)]
    h = np.where(r == maxc, (bc - gc).astype(f32),
                 np.where(g == maxc, (2.0 + rc.astype(f64) - bc).astype(f32),
                          (4.0 + gc.astype(f64) - rc).astype(f32)))
    h = np.fmod(h.astype(f64) / 6.0 + 1.0, 1.0).astype(f32)
    uh = np.clip(np.trunc(np.nan_to_num(h.astype(f64) * 255.0)), 0, 255)
    h_of_rgb[r] = np.where(maxc == minc, 0, uh)
  maxc, minc = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  with np.errstate(divide="ignore", invalid="ignore"):
    s = ((maxc - minc).astype(f32) / maxc.astype(f32)).astype(f32)
    us = np.clip(np.trunc(np.nan_to_num(s.astype(f64) * 255.0)), 0, 255)
  s_of_maxmin = np.where(maxc == minc, 0, us).astype(np.uint8).reshape(-1)

  def c_round(x):  # C round(): half away from zero (x >= 0 here).
    floor = np.floor(x)
    return np.clip(floor + (x - floor >= 0.5), 0, 255)

  s, v = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  s, v = s.reshape(-1), v.reshape(-1).astype(f64)
  fs = (s.astype(f32) / 255.0).astype(f32)
  rgb_of_hsv = np.empty((256, 1 << 16, 3), np.uint8)
  for h in range(256):
    i = int(np.floor(f64(f32(h)) * 6.0 / 255.0))
    f = f32(f64(f32(h)) * 6.0 / 255.0 - i)
    p = c_round(v * (1.0 - fs.astype(f64)))
    q = c_round(v * (1.0 - (fs * f).astype(f32).astype(f64)))
    t = c_round(v * (1.0 - fs.astype(f64) * (1.0 - f64(f))))
    rows = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    out = np.stack(rows, -1)
    rgb_of_hsv[h] = np.where((s == 0)[:, None], v[:, None], out)
  return h_of_rgb.reshape(-1), s_of_maxmin, rgb_of_hsv.reshape(-1, 3)
