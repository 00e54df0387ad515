"""The synthetic hand-object dataset (data_pipeline/synthetic.py) as TFDS storage windows.

  python -m data_pipeline.tfds build data_pipeline/tfds/synthetic --data_dir=/data/tfds

Nothing to download: videos are rendered from the seed. Config `demo` is the data of `make demo`
(configs/synthetic.py, `demo_data`: seed 0, 96/16/32 videos of 24-32 frames, 56x96, T=16, t=8;
tests/test_tfds_builders.py checks the two agree).
"""

import dataclasses
from typing import Any, Dict

from data_pipeline import synthetic
from data_pipeline.tfds import common


@dataclasses.dataclass(eq=False)
class SyntheticWindowConfig(common.WindowConfig):
  """WindowConfig plus `source`: keyword arguments of synthetic.SyntheticConfig (but image_size,
  which is the config's), e.g. {"seed": 1, "num_videos": 4, "num_hands": 2}."""
  source: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    super().__post_init__()
    self.source_config()  # fails here, naming the bad field, not in the middle of a build

  def source_config(self) -> synthetic.SyntheticConfig:
    source = dict(self.source)
    if "image_size" in source:
      raise ValueError(f"config {self.name!r}: set image_size on the config, not in source")
    for key in ("frames", "verbs", "objects"):  # JSON gives lists; the fields are tuples
      if key in source:
        source[key] = tuple(source[key])
    return synthetic.SyntheticConfig(image_size=tuple(self.image_size), **source)


class Builder(common.WindowedVideoBuilder):
  """Procedural egocentric hand-object videos; splits train, val, test (disjoint subjects)."""

  BUILDER_CONFIGS = [
      SyntheticWindowConfig(name="demo", num_frames=16, window=8, image_size=(56, 96),
                            source={"seed": 0, "num_videos": {"train": 96, "val": 16,
                                                              "test": 32},
                                    "num_subjects": {"train": 8, "val": 2, "test": 4},
                                    "object_scale": 1.3, "scene_saturation": 0.35,
                                    "frames": (24, 32)}),
  ]
  SPLIT_NAMES = synthetic.SPLITS
  DESCRIPTION = (
      "Synthetic egocentric hand-object videos with exact 3D joints, cut into HTT's storage "
      "windows (data_pipeline/schema.py). Verbs come in pairs that are time reversals of each "
      "other, so only the frame order tells them apart.")

  def _joints_and_hands(self):
    hands = self.builder_config.source_config().num_hands
    return 21 * hands, hands

  def _open_source(self, dl_manager):
    del dl_manager  # rendered, nothing to read
    source = self.builder_config.source_config()
    return (synthetic.load_vocabulary(source),
            lambda split: synthetic.iter_videos(source, split))
