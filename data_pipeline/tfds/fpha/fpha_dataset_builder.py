"""FPHA (First-Person Hand Action benchmark) as TFDS storage windows, from a manual download.

  python -m data_pipeline.tfds build data_pipeline/tfds/fpha --manual_dir=/data/fpha \
      --data_dir=/data/tfds --config=paper

gives the records `scripts/prepare_data.py --dataset=fpha` writes for the same settings (see
data_pipeline/tfds/common.py), plus `<split>.manifest.json` in /data/tfds/fpha/paper/1.0.0/.
"""

from data_pipeline import fpha
from data_pipeline.tfds import common

_LAYOUT = """\
  data_split_action_recognition.txt
  action_object_info.txt
  Subjects_info/Subject_<k>_info.txt
  Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt
  Video_files_480/Subject_<k>/<action>/<seq>/color/color_<0000>.jpeg   (480x270 copies), or
  Video_files/Subject_<k>/<action>/<seq>/color/color_<0000>.jpeg       (1920x1080 originals,
      shrunk here the way the reference's preprocessing did)"""


class Builder(common.WindowedVideoBuilder):
  """FPHA: 45 actions, 26 objects, one hand (21 joints); splits train and test (1:1 subjects)."""

  BUILDER_CONFIGS = [
      common.WindowConfig(name="paper"),  # the paper's T, t and 270x480 (prepare_data defaults)
      # configs/fpha.py:runlocal
      common.WindowConfig(name="runlocal", num_frames=32, window=16, image_size=(96, 160)),
  ]
  SPLIT_NAMES = fpha.SPLITS
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FPHA is distributed by its authors on request (see the homepage). Pass the extracted folder as
--manual_dir (or put it in <manual_dir>/fpha/); this layout is read:
{_LAYOUT}
"""
  DESCRIPTION = (
      "First-Person Hand Action benchmark (RGB frames, 3D hand joints, action and object labels) "
      "cut into HTT's storage windows: one example = up to T+t-1 sub-sampled frames of one "
      "video, from which every training clip of the window's block and its evaluation clip are "
      "cut at read time (data_pipeline/schema.py). Joints are in colour-camera metres, reordered "
      "wrist, thumb..pinky MCP->tip.")
  HOMEPAGE = "https://guiggh.github.io/publications/first-person-hands/"
  CITATION = """\
@inproceedings{garcia2018first,
  title={First-Person Hand Action Benchmark with RGB-D Videos and 3D Hand Pose Annotations},
  author={Garcia-Hernando, Guillermo and Yuan, Shanxin and Baek, Seungryul and Kim, Tae-Kyun},
  booktitle={CVPR},
  year={2018}
}"""

  def _joints_and_hands(self):
    return fpha.NUM_JOINTS, 1

  def _open_source(self, dl_manager):
    raw = self._raw_dir(dl_manager, fpha.SPLIT_FILE)
    size = self.builder_config.image_size
    return fpha.load_vocabulary(raw), lambda split: fpha.iter_videos(raw, split, size)
