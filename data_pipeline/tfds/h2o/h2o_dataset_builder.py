"""H2O (two hands and objects) as TFDS storage windows, from a manual download.

  python -m data_pipeline.tfds build data_pipeline/tfds/h2o --manual_dir=/data/h2o \
      --data_dir=/data/tfds --config=paper

gives the records `scripts/prepare_data.py --dataset=h2o` writes for the same settings (see
data_pipeline/tfds/common.py), plus `<split>.manifest.json` in /data/tfds/h2o/paper/1.0.0/.
The public test file has no labels: its windows have action and object -1.
"""

import os

from data_pipeline import h2o
from data_pipeline.tfds import common

_LAYOUT = """\
  action_labels/action_train.txt, action_val.txt, action_test.txt
  <subject>/<scene>/<seq>/cam4/hand_pose/<frame:06d>.txt
  <subject>/<scene>/<seq>/cam4/rgb480_270/<frame:06d>.png   (480x270 copies), or
  <subject>/<scene>/<seq>/cam4/rgb/<frame:06d>.png          (1280x720 originals, shrunk here
      the way the reference's preprocessing did)"""


class Builder(common.WindowedVideoBuilder):
  """H2O: 36 actions, 8 objects, two hands (42 joints, left 0-20); splits train, val, test."""

  BUILDER_CONFIGS = [
      common.WindowConfig(name="paper"),  # the paper's T, t and 270x480 (prepare_data defaults)
      # configs/h2o.py:runlocal
      common.WindowConfig(name="runlocal", num_frames=32, window=16, image_size=(96, 160)),
  ]
  SPLIT_NAMES = h2o.SPLITS
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download H2O (registration on the homepage): the action labels and, for every sequence, the cam4
hand poses and RGB frames. Pass the folder as --manual_dir (or put it in <manual_dir>/h2o/); this
layout is read:
{_LAYOUT}
"""
  DESCRIPTION = (
      "H2O: two hands manipulating objects (RGB frames, 3D joints of both hands, action labels "
      "per segment) cut into HTT's storage windows: one example = up to T+t-1 sub-sampled frames "
      "of one action segment, from which every training clip of the window's block and its "
      "evaluation clip are cut at read time (data_pipeline/schema.py). A hand whose annotation "
      "flag is 0 has hand_valid False and 2D (0, 0).")
  HOMEPAGE = "https://taeinkwon.com/projects/h2o/"
  CITATION = """\
@inproceedings{kwon2021h2o,
  title={H2O: Two Hands Manipulating Objects for First Person Interaction Recognition},
  author={Kwon, Taein and Tekin, Bugra and St{\\"u}hmer, Jan and Bogo, Federica and
          Pollefeys, Marc},
  booktitle={ICCV},
  year={2021}
}"""

  def _joints_and_hands(self):
    return h2o.NUM_JOINTS, 2

  def _open_source(self, dl_manager):
    raw = self._raw_dir(dl_manager, os.path.join("action_labels", "action_train.txt"))
    size = self.builder_config.image_size
    return h2o.load_vocabulary(raw), lambda split: h2o.iter_videos(raw, split, size)
