"""Runs a trained (or converted) HTT on a video file or a folder of frames (docs/video.md).

  python scripts/predict_video.py --config=configs/fpha.py --checkpoint_dir=runs/fpha/checkpoints \
      --video=kitchen.mp4 --output_dir=runs/kitchen [--intrinsics=fx,fy,cx,cy] [--fps=N]

--video: any file FFmpeg decodes (mp4, mov, avi, mkv, webm) or a folder of png/jpg frames (name
order; --fps sets the outputs' rate, default 30). --intrinsics: pixels of the input's own
resolution; without it, the config's dataset camera scaled to the input (depth then approximate).
Writes O/predictions.npz, O/predictions.json, O/overlay.mp4 and O/figures/, atomically.
--video and --output_dir may be gs:// URLs (a video is streamed from the bucket, not downloaded
whole; the outputs are uploaded there, overlay.mp4 once complete).
"""

from absl import flags
from ml_collections import config_flags

from htt_jax import cli, config_lib, cpu_flags

config_flags.DEFINE_config_file("config", None, "Model config file.", lock_config=True)
flags.DEFINE_string("checkpoint_dir", None, "Orbax checkpoint directory (training or converted).")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.DEFINE_string("video", None, "Video file or folder of frames (local or gs://).")
flags.DEFINE_string("output_dir", None, "Folder for the outputs (local or gs://).")
flags.DEFINE_string("intrinsics", None, "fx,fy,cx,cy in pixels of the input.")
flags.DEFINE_float("fps", None, "Frame rate of the outputs (frame folders: default 30).")
flags.DEFINE_bool("figures", True, "Also draw figures/ (timeline, Fig. 6, Fig. 7).")
flags.mark_flags_as_required(["config", "checkpoint_dir", "video", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  config_lib.validate_config(config)
  cpu_flags.configure([config])  # before JAX starts
  from htt_jax import video_predict  # pylint: disable=g-import-not-at-top
  summary = video_predict.predict_video(
      config, FLAGS.checkpoint_dir, FLAGS.video, FLAGS.output_dir, intrinsics=FLAGS.intrinsics,
      fps=FLAGS.fps, step=FLAGS.step, figures=FLAGS.figures)
  top = summary["top5"][0]
  print(f"{summary['num_frames']} frames, {len(summary['clips'])} clips; video action: "
        f"{top['name']} ({top['probability']:.2f})\noutputs: {FLAGS.output_dir}/overlay.mp4, "
        f"predictions.npz, predictions.json{', figures/' if FLAGS.figures else ''}")


if __name__ == "__main__":
  cli.run(main)
