"""Image reading and resizing shared by the FPHA and H2O sources.

The reference trains on 480x270 copies of the raw frames made by its preprocessing
(reference.md §3.3, §6.15), and the two datasets were shrunk differently:
  FPHA: PIL `resize((480, 270), BILINEAR)` (antialiased on downscale), saved as JPEG quality 75;
  H2O:  OpenCV `resize(..., (480, 270))` (INTER_LINEAR, no antialias), saved as PNG.
When a raw folder holds only the originals, `FrameLoader` redoes that step in memory so that the
frames match what the reference saw; `resize_linear_cv` reimplements OpenCV's arithmetic because
OpenCV itself is not a dependency. A different stored `image_size` is then reached from the
480x270 frame with PIL bilinear (our choice; the reference only ever used 480x270).

Errors name the file: a missing file raises `MissingFileError` (a FileNotFoundError that is also a
ValueError, so callers that report bad data by catching ValueError, like scripts/prepare_data.py,
see it too); an undecodable image or one of the wrong size raises ValueError.
"""

import dataclasses
import io
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# The size the reference works at (H, W); 2D joints and intrinsics are defined for it.
REFERENCE_SIZE = (270, 480)


class MissingFileError(FileNotFoundError, ValueError):
  """A file the dataset layout requires does not exist."""


def read_rgb(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB of an image file; errors name the file."""
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file fails here, not later
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise MissingFileError(f"{path}: image file not found") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def resize_pil_bilinear(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """PIL BILINEAR resize to size=(H, W): antialiased when shrinking, as FPHA's preprocessing."""
  if image.shape[:2] == tuple(size):
    return image
  out = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(out)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
  """Encodes and decodes with PIL's JPEG defaults, as FPHA's preprocessing saved its frames."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return np.asarray(decoded.convert("RGB"))


def _linear_taps(src: int, dst: int, clamp_weights: bool):
  """OpenCV INTER_LINEAR source indices and 11-bit weights for each output index of one axis.

  Sample position (d + 0.5) * src/dst - 0.5 (pixel centres aligned), computed in float32 like
  OpenCV; weights (1 - f, f) scaled by 2048 and rounded to the nearest integer. Outside the image
  the edge pixel is used: OpenCV moves the column position onto the edge (weights 2048, 0) but
  only clips the row indices (weights kept), which can round differently, so both are mirrored.
  """
  scale = np.float64(src) / np.float64(dst)
  pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  index = np.floor(pos).astype(np.int64)
  frac = (pos - index.astype(np.float32)).astype(np.float32)
  if clamp_weights:
    low, high = index < 0, index >= src - 1
    frac[low | high] = 0
    index[low], index[high] = 0, src - 1
  w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int32)
  w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
  return np.clip(index, 0, src - 1), np.clip(index + 1, 0, src - 1), w0, w1


def resize_linear_cv(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """cv2.resize(image, (W, H)) with INTER_LINEAR for uint8 images, no antialias
  (H2O, reference.md §3.3).

  Follows OpenCV's fixed-point path for 8-bit images: a horizontal pass with 11-bit integer
  weights into an int buffer, then a vertical pass that (as OpenCV's SIMD kernel does) shifts the
  buffer right by 4, multiplies by the 11-bit row weights keeping the high 16 bits, adds the two
  rows and rounds away the last 2 bits. Not checked against cv2 on this machine (cv2 is not a
  dependency; tests compare with cv2 when it is installed); any residual difference is at most
  one grey level, far below JPEG storage noise.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"resize_linear_cv expects (H, W, C) uint8, got {image.dtype} {image.shape}")
  if image.shape[:2] == tuple(size):
    return image
  h_out, w_out = size
  x0, x1, a0, a1 = _linear_taps(image.shape[1], w_out, clamp_weights=True)
  y0, y1, b0, b1 = _linear_taps(image.shape[0], h_out, clamp_weights=False)
  src = image.astype(np.int32)  # every intermediate stays below 2**27
  rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # (H_in, W_out, C)
  top = ((rows[y0] >> 4) * b0[:, None, None]) >> 16
  bottom = ((rows[y1] >> 4) * b1[:, None, None]) >> 16
  return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


_BASE_RESIZERS = {"pil_bilinear": resize_pil_bilinear, "cv_linear": resize_linear_cv}


@dataclasses.dataclass(frozen=True)
class FrameLoader:
  """Picklable `Video.load_image`: position i -> (H, W, 3) uint8 at `image_size`.

  Loads one file per call (a video's frames are never all held in memory). The file of position
  i is `pattern.format(frame=frames[i])` and must have size `file_size`; if that is not the
  reference size it is shrunk to 480x270 with `base_resize` (and re-encoded as JPEG of
  `jpeg_quality` when set), then resized to `image_size` with PIL bilinear if that differs.
  """
  pattern: str
  frames: Sequence[int]  # raw frame numbers by position, e.g. a range (pickles small)
  image_size: Tuple[int, int]
  file_size: Tuple[int, int] = REFERENCE_SIZE
  base_resize: str = "pil_bilinear"
  jpeg_quality: Optional[int] = None

  def __post_init__(self):
    if self.base_resize not in _BASE_RESIZERS:
      raise ValueError(f"base_resize must be one of {sorted(_BASE_RESIZERS)}, got "
                       f"{self.base_resize!r}")

  def path(self, i: int) -> str:
    return self.pattern.format(frame=self.frames[i])

  def __call__(self, i: int) -> np.ndarray:
    path = self.path(i)
    image = read_rgb(path)
    if image.shape[:2] != tuple(self.file_size):
      raise ValueError(f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH), expected "
                       f"{self.file_size[1]}x{self.file_size[0]}")
    if tuple(self.file_size) != REFERENCE_SIZE:
      image = _BASE_RESIZERS[self.base_resize](image, REFERENCE_SIZE)
      if self.jpeg_quality is not None:
        image = jpeg_roundtrip(image, self.jpeg_quality)
    return resize_pil_bilinear(image, self.image_size)


def scale_intrinsics(fx: float, fy: float, cx: float, cy: float, full_size: Tuple[int, int],
                     image_size: Tuple[int, int]) -> np.ndarray:
  """(3, 3) float64 intrinsics of the full-resolution camera for an image of `image_size`.

  Rows 0-1 scale by W/W_full and H/H_full, as the reference's x1/4 (FPHA) and x0.375 (H2O) do for
  480x270 (reference.md §3.1, §3.2).
  """
  sx, sy = image_size[1] / full_size[1], image_size[0] / full_size[0]
  return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def check_image_size(image_size) -> Tuple[int, int]:
  """(H, W) as ints; errors on anything else."""
  try:
    h, w = (int(v) for v in image_size)
  except (TypeError, ValueError):
    raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"image_size must be positive, got {image_size!r}")
  return h, w
