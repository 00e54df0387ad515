"""The demo's last step: one held-out synthetic video through `predict_video` (docs/video.md).

The first test video (subjects the model never saw) is rendered at 4x the training size
(224x384: the overlay is readable, and the letterbox's resize is exercised), written as an mp4
and run through `video_predict.predict_video` with the training checkpoint, exactly as
`scripts/predict_video.py` would; the synthetic camera is passed as --intrinsics would be.
"""

import os
from fractions import Fraction

SCALE = 4  # Rendered size / training size.
FPS = 15


def render_held_out_video(config, workdir: str, index: int = 0) -> dict:
  """Writes workdir/video/input.mp4 and the predict_video outputs beside it; returns the summary
  with `true_action` (its name) added."""
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from htt_jax import storage, video_io, video_predict  # pylint: disable=g-import-not-at-top
  height, width = config.dataset.image_size
  size = (height * SCALE, width * SCALE)
  source = synthetic.from_fields(config.demo_data, image_size=size)
  videos = synthetic.iter_videos(source, "test")
  for _ in range(index):
    next(videos)
  clip = next(videos)
  output_dir = os.path.join(workdir, "video")
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, "input.mp4")
  with storage.replacing(path) as temporary:
    writer = video_io.OverlayWriter(temporary, size, Fraction(FPS))
    try:
      for i in range(len(clip)):
        writer.write(clip.load_image(i))
    finally:
      writer.close()
  k = synthetic.intrinsics_for(size)
  summary = video_predict.predict_video(
      config, os.path.join(workdir, "checkpoints"), path, output_dir,
      intrinsics=f"{k[0, 0]},{k[1, 1]},{k[0, 2]},{k[1, 2]}")
  summary["true_action"] = synthetic.load_vocabulary(source)["actions"][clip.action]
  return summary


def describe(summary: dict, output_dir: str) -> str:
  top = summary["top5"][0]
  return (f"held-out video {summary['video']} ({summary['num_frames']} frames): predicted "
          f"'{top['name']}' ({top['probability']:.2f}), true '{summary['true_action']}'\n"
          f"overlay: {os.path.join(output_dir, 'overlay.mp4')}; figures: "
          f"{os.path.join(output_dir, 'figures')}/ (timeline, Fig. 6, Fig. 7)")
