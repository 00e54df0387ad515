"""The reference's training augmentation (reference.md §3.7), reproduced bit for bit.

Per clip, in the reference's order (datasets/seqset_htt.py:SeqSet.get_sample): a Gaussian blur
(radius per frame), colour jitter (factors per clip, the four ops in a random order reshuffled
per frame), then an exact integer translation with black fill, which also moves the 2D labels
and the intrinsics. Colour comes first, so the uncovered border stays black and the contrast op
averages the whole unshifted image.

Modules:
  params      the random draws of a clip, keyed statelessly (TF, run by the tf.data reader), and
              their device form; the one place where parameters are sampled.
  host        the ops in TF on the host (tf.data), and `augment_clip`, the reader's entry point.
  device      the same ops in JAX inside the training step (`dataset.augment.on_device`).
  pillow_hsv  Pillow's RGB <-> HSV conversions as exact lookup tables (numpy), for both.

This file holds what all of them agree on, and imports neither TensorFlow nor JAX: the training
step (device ops) must not load TensorFlow, nor the tf.data reader JAX.
"""

import dataclasses

# Op ids, in the order the reference's colortrans.apply_jitter lists them before shuffling; a
# clip's `order` (T, 4) holds these per frame and round.
BRIGHTNESS, SATURATION, HUE, CONTRAST = 0, 1, 2, 3
NUM_COLOR_OPS = 4

# The batch keys that carry a clip's drawn params to the training step (augment.on_device):
# aug_offset (2,) int32 (x, y); aug_brightness, aug_saturation, aug_contrast () float32;
# aug_hue_shift () int32; aug_blur_weights (T, 2K+1) int32 fixed-point taps; aug_order (T, 4).
DEVICE_PARAM_KEYS = ("aug_offset", "aug_brightness", "aug_saturation", "aug_contrast",
                     "aug_hue_shift", "aug_blur_weights", "aug_order")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Amounts (reference defaults, reference.md §3.7; 0 disables an op as in the reference)."""
  brightness: float = 0.5  # factor ~ U[max(0, 1 - b), 1 + b], per clip
  contrast: float = 0.5
  saturation: float = 0.5
  hue: float = 0.15  # shift ~ U[-h, h], per clip
  blur_radius: float = 0.5  # radius ~ U[0, 1) * r, per frame
  center_jittering: float = 0.1  # offset = trunc(c * width * U[-1, 1)), per clip and axis
  # Frames processed together: bounds the float32 intermediates to a few of these chunks.
  chunk_frames: int = 16
  # True: the reader only draws the params and moves the geometry; blur, colour and the image
  # shift run in the training step on the accelerator (device.py, same arithmetic).
  on_device: bool = False

  @property
  def photometric(self) -> bool:
    """False when blur and colour jitter are all off: then every op is the identity (factors of
    exactly 1, no hue shift, radius 0), so the reader skips them (the demo's data, 12 of its 18 ms
    of CPU a batch; docs/data.md)."""
    return any(a > 0 for a in (self.brightness, self.contrast, self.saturation, self.hue,
                               self.blur_radius))


def from_config(config) -> AugmentConfig:
  """The reference's amounts, or config.dataset.augment's overrides where present."""
  overrides = config.dataset.get("augment", None)
  return AugmentConfig(**(dict(overrides) if overrides else {}))
