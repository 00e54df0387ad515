"""Converts a dataset to TFRecord shards of storage windows plus one manifest per split.

  python scripts/prepare_data.py --dataset=fpha --raw_dir=/data/fpha --output_dir=/data/fpha_tfr
  python scripts/prepare_data.py --dataset=h2o --raw_dir=/data/h2o --output_dir=/data/h2o_tfr \
      --image_size=270,480 --num_workers=8
  python scripts/prepare_data.py --dataset=synthetic --output_dir=runs/synthetic_data

Rerunning the same command resumes an interrupted conversion (finished shards are kept); output of
another configuration in --output_dir is refused. The file layout and manifest keys are described
in data_pipeline/schema.py, the conversion (plan, shards, workers) in data_pipeline/writer.py.
--output_dir may be a gs:// URL (shards through TensorFlow's GCS client, plans and manifests
through etils.epath; docs/launch.md, "Cloud Storage"); --raw_dir is a local folder.

Every flag is checked before anything is read or written (check_flags): T a multiple of t and
frames of at least the backbone's stride, as training requires (htt_jax/config_lib.py), JPEG quality
1..100, positive counts and sizes, known splits; then every split's list is read up to its first
video, so an empty or malformed split fails before any split is converted.
"""

import dataclasses
import importlib
import math
import os

# Before TensorFlow is imported here or in the spawned workers (they inherit the environment).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

from htt_jax import cli, config_lib, storage  # pylint: disable=g-import-not-at-top

flags.DEFINE_enum("dataset", None, ["fpha", "h2o", "synthetic"], "Which source to convert.")
flags.DEFINE_string("raw_dir", None, "Raw dataset folder (fpha, h2o); ignored for synthetic.")
flags.DEFINE_string("output_dir", None, "Where shards and manifests go.")
flags.DEFINE_list("image_size", ["270", "480"], "Stored frame size H,W, each at least "
                  f"{config_lib.BACKBONE_STRIDE} (2D joints and intrinsics are scaled to match).")
flags.DEFINE_integer("num_frames", 128, "T: frames per clip, a multiple of --window.")
flags.DEFINE_integer("window", 16,
                     "t: frames per window of block P (= training offsets per block).")
flags.DEFINE_integer("spacing", 2, "Temporal spacing between a clip's frames.")
flags.DEFINE_list("splits", None, "Splits to convert; default: all of the dataset's splits.")
flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png"], "Stored frame encoding.")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality 1..100 (image_format=jpeg).")
flags.DEFINE_integer("num_workers", min(8, os.cpu_count() or 1),
                     "Processes encoding and writing shards (each imports TensorFlow, ~0.6 GB).")
flags.DEFINE_float("shard_mb", 150, "Approximate shard size in MB.")
flags.DEFINE_integer("min_shards", 1, "At least this many shards per split (if it has as many "
                     "videos), e.g. the number of hosts that read with host_sharding='files'.")
flags.DEFINE_integer("synthetic_videos", None, "synthetic: videos per split (default: the "
                     "source's default).")
flags.DEFINE_integer("synthetic_seed", None, "synthetic: random seed (default: the source's).")
flags.mark_flags_as_required(["dataset", "output_dir"])
FLAGS = flags.FLAGS

# Flag -> SyntheticConfig field it sets.
_SYNTHETIC_FIELDS = {"synthetic_videos": "num_videos", "synthetic_seed": "seed"}


def _synthetic_config(module, image_size):
  """SyntheticConfig from the flags; a flag the config has no field for is an error, not ignored."""
  names = {f.name for f in dataclasses.fields(module.SyntheticConfig)}
  values = {"image_size": image_size}
  values.update({field: getattr(FLAGS, flag) for flag, field in _SYNTHETIC_FIELDS.items()
                 if getattr(FLAGS, flag) is not None})
  unknown = sorted(set(values) - names)
  if unknown:
    raise app.UsageError(f"data_pipeline.synthetic.SyntheticConfig has no field(s) {unknown}; "
                         f"its fields: {sorted(names)}")
  return module.SyntheticConfig(**values)


def _at_least(values, name: str, low: int, what: str = "") -> None:
  value = getattr(values, name)
  if value is not None and value < low:
    raise app.UsageError(f"--{name}={value} must be an integer >= {low}{what}")


def check_flags(values=FLAGS) -> tuple:
  """Raises app.UsageError naming the flag and what it must be; returns the image size (H, W).

  The rules training applies to the data (config_lib.validate_config) are applied here too, so
  that no conversion ends in data that no config can train on. `values`: parsed flags (FLAGS).
  """
  from data_pipeline import writer  # pylint: disable=g-import-not-at-top
  stride = config_lib.BACKBONE_STRIDE
  try:
    image_size = tuple(int(x) for x in values.image_size)
  except ValueError:
    image_size = ()
  if len(image_size) != 2 or min(image_size) < stride:
    raise app.UsageError(f"--image_size={','.join(values.image_size)} must be H,W with both at "
                         f"least {stride} px (the ResNet-18 backbone's total stride)")
  _at_least(values, "num_frames", 1, " (T: frames per clip)")
  _at_least(values, "window", 1, " (t: frames per window)")
  if values.num_frames % values.window:
    raise app.UsageError(f"--num_frames={values.num_frames} (T) must be a multiple of "
                         f"--window={values.window} (t), as training requires")
  _at_least(values, "spacing", 1)
  low, high = writer.JPEG_QUALITY_RANGE
  if not low <= values.jpeg_quality <= high:
    raise app.UsageError(f"--jpeg_quality={values.jpeg_quality} must be in {low}..{high}")
  _at_least(values, "num_workers", 1)
  if not (math.isfinite(values.shard_mb) and values.shard_mb > 0):
    raise app.UsageError(f"--shard_mb={values.shard_mb} must be a positive number of MB")
  _at_least(values, "min_shards", 1)
  _at_least(values, "synthetic_videos", 1, " (videos per split)")
  _at_least(values, "synthetic_seed", 0)
  return image_size


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  image_size = check_flags(FLAGS)  # before anything is read or written
  from data_pipeline import writer  # pylint: disable=g-import-not-at-top
  # Sources import lazily: only the chosen dataset's code (and its dependencies) is loaded.
  module = importlib.import_module(f"data_pipeline.{FLAGS.dataset}")
  known = tuple(getattr(module, "SPLITS", ("train", "test")))
  splits = FLAGS.splits or list(known)
  unknown = [s for s in splits if s not in known]
  if unknown:
    raise app.UsageError(f"--splits={','.join(FLAGS.splits)}: {unknown} are not splits of "
                         f"--dataset={FLAGS.dataset}, whose splits are {','.join(known)}")
  if FLAGS.dataset == "synthetic":
    config = _synthetic_config(module, image_size)
    vocabulary = module.load_vocabulary(config)
    videos_of = lambda split: module.iter_videos(config, split)
  else:
    if not FLAGS.raw_dir:
      raise app.UsageError(f"--raw_dir is required for --dataset={FLAGS.dataset}")
    if storage.is_url(FLAGS.raw_dir):  # the sources read frames with PIL, from local files
      raise app.UsageError(f"--raw_dir={FLAGS.raw_dir} must be a local folder (copy the raw "
                           "dataset to local disk first); --output_dir may be a gs:// URL")
    if not os.path.isdir(FLAGS.raw_dir):
      raise app.UsageError(f"--raw_dir={FLAGS.raw_dir} is not a directory")
    vocabulary = module.load_vocabulary(FLAGS.raw_dir)
    videos_of = lambda split: module.iter_videos(FLAGS.raw_dir, split, image_size)
  source = (f"--dataset={FLAGS.dataset}" if FLAGS.dataset == "synthetic"
            else f"--raw_dir={FLAGS.raw_dir}")
  for split in splits:  # each split's list, up to its first video: an empty split fails here
    try:
      first = next(iter(videos_of(split)), None)
    except ValueError as e:  # a malformed split file: the message names it
      raise config_lib.ConfigError(f"split {split!r}: {e}") from e
    if first is None:
      raise config_lib.ConfigError(f"split {split!r} of {source} has no videos: nothing to "
                                   "convert (check the split's list)")
  storage.check_writable(FLAGS.output_dir)  # a missing bucket or no permission: before any work
  for split in splits:
    try:
      manifest = writer.prepare_split(
          videos_of(split), FLAGS.output_dir, split, num_frames=FLAGS.num_frames,
          window=FLAGS.window, spacing=FLAGS.spacing, image_format=FLAGS.image_format,
          jpeg_quality=FLAGS.jpeg_quality, shard_bytes=FLAGS.shard_mb * 1e6,
          min_shards=FLAGS.min_shards, num_workers=FLAGS.num_workers, vocabulary=vocabulary,
          dataset_name=FLAGS.dataset, image_size=image_size)
    except ValueError as e:  # bad data or a conflicting --output_dir: the message says which file
      raise config_lib.ConfigError(f"split {split!r}: {e}") from e
    logging.info("%s: %d videos, %d training / %d evaluation clips, %d frames (%d stored), "
                 "%d shards, %.1f MB, %.1f kB per stored frame", split,
                 manifest["videos"]["count"], manifest["clips"]["train"],
                 manifest["clips"]["eval"], manifest["frames"]["raw"],
                 manifest["frames"]["stored"], len(manifest["shards"]), manifest["bytes"] / 1e6,
                 manifest["bytes_per_stored_frame"] / 1e3)
  print(f"prepared {', '.join(splits)} in {FLAGS.output_dir}")


if __name__ == "__main__":
  cli.run(main)
