"""TFDS builders (data_pipeline/tfds) against prepare_data.py's writer on the same raw folders.

The writer's output is the reference here (tests/test_writer.py checks it against the clip rules):
a builder must give the same records (equal tf.train.Example protos, same order), a manifest that
agrees, and clips that read_clips and the training input pipeline read the same way.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from data_pipeline import fpha, h2o, reader, schema, synthetic, writer
from data_pipeline.tfds import common
from data_pipeline.tfds.fpha import fpha_dataset_builder
from data_pipeline.tfds.h2o import h2o_dataset_builder
from data_pipeline.tfds.synthetic import synthetic_dataset_builder
import raw_layouts as rl

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = (72, 128)
WINDOWING = dict(num_frames=16, window=4, spacing=2)
# Keys that describe the data, not the files holding it.
SAME_KEYS = ("format_version", "dataset", "num_frames", "window", "spacing", "image_size",
             "image_format", "jpeg_quality", "split", "num_joints", "num_hands", "vocabulary",
             "videos", "clips", "frames", "records")


def tiny_config(cls=common.WindowConfig, **kwargs):
  return cls(name="tiny", image_size=SIZE, **WINDOWING, **kwargs)


def build(builder_cls, data_dir, manual_dir=None, config=None, **download):
  builder = builder_cls(config=config or tiny_config(), data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir and str(manual_dir), **download))
  return builder


def prepare(videos_of, vocabulary, output_dir, splits, dataset_name):
  for split in splits:
    writer.prepare_split(videos_of(split), str(output_dir), split, **WINDOWING,
                         vocabulary=vocabulary, dataset_name=dataset_name, image_size=SIZE,
                         num_workers=1, progress=False)


def records(files):
  return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
      [os.fspath(f) for f in files])]


def check_same_as_writer(builder, prepared_dir, splits):
  """Same manifest content, same records in the same order, same clips."""
  tfds_dir = builder.data_dir
  for split in splits:
    ours = schema.load_manifest(str(prepared_dir), split)
    theirs = schema.load_manifest(tfds_dir, split)
    for key in SAME_KEYS:
      assert theirs[key] == ours[key], (split, key)
    info = builder.info.splits[split]
    assert [s["file"] for s in theirs["shards"]] == info.filenames
    assert [s["records"] for s in theirs["shards"]] == info.shard_lengths
    assert sum(s["stored_frames"] for s in theirs["shards"]) == ours["frames"]["stored"]
    expected = records(os.path.join(prepared_dir, s["file"]) for s in ours["shards"])
    got = records(info.filepaths)
    assert len(got) == len(expected) == ours["records"]
    for i, (a, b) in enumerate(zip(got, expected)):
      assert a == b, (split, i)
    clips = list(reader.read_clips(tfds_dir, split, all_train_offsets=True))
    assert len(clips) == ours["clips"]["train"]
    for a, b in zip(clips, reader.read_clips(str(prepared_dir), split, all_train_offsets=True)):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")


@pytest.fixture(scope="module")
def fpha_built(tmp_path_factory):
  """(raw folder, TFDS builder, prepare_data output) of the tiny FPHA folder."""
  tmp = tmp_path_factory.mktemp("fpha")
  raw = rl.write_fpha(tmp / "raw")
  prepare(lambda split: fpha.iter_videos(raw, split, SIZE), fpha.load_vocabulary(raw),
          tmp / "prepared", fpha.SPLITS, "fpha")
  return raw, build(fpha_dataset_builder.Builder, tmp / "tfds", raw), tmp / "prepared"


def test_fpha_same_records_as_prepare_data(fpha_built):
  raw, builder, prepared = fpha_built
  check_same_as_writer(builder, prepared, ("train", "test"))
  assert pathlib.Path(builder.data_dir).parts[-3:] == ("fpha", "tiny", "1.0.0")
  assert set(builder.info.splits) == {"train", "test"}
  assert builder.info.metadata["vocabulary"] == fpha.load_vocabulary(raw)
  # What tfds.load users get: decoded frames and shaped arrays.
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
  assert example["video_id"] == b"Subject_1/charge_cell_phone/1"
  n = len(example["frame_idx"])
  assert example["image"].shape == (n, *SIZE, 3) and example["image"].dtype == np.uint8
  assert example["joints3d"].shape == (n, 21, 3) and example["hand_valid"].shape == (n, 1)
  assert example["hand_valid"].dtype == bool and example["intrinsics"].shape == (3, 3)


def test_h2o_same_records_as_prepare_data(tmp_path):
  # The raw folder as <manual_dir>/h2o/ (TFDS's per-dataset manual folder) is found too.
  raw = rl.write_h2o(tmp_path / "manual" / "h2o")
  prepare(lambda split: h2o.iter_videos(raw, split, SIZE), h2o.load_vocabulary(raw),
          tmp_path / "prepared", h2o.SPLITS, "h2o")
  builder = build(h2o_dataset_builder.Builder, tmp_path / "tfds", tmp_path / "manual")
  check_same_as_writer(builder, tmp_path / "prepared", ("train", "val", "test"))
  clips = list(reader.read_clips(builder.data_dir, "test"))  # public test file: unlabelled
  assert clips and all(int(c["action"]) == -1 and (c["object"] == -1).all() for c in clips)


def test_synthetic_same_records_as_writer(tmp_path, monkeypatch):
  config = tiny_config(synthetic_dataset_builder.SyntheticWindowConfig,
                       source={"seed": 3, "num_videos": 2, "frames": [18, 22]})
  source = config.source_config()
  prepare(lambda split: synthetic.iter_videos(source, split), synthetic.load_vocabulary(source),
          tmp_path / "prepared", synthetic.SPLITS, "synthetic")
  # As for a split over 1 GB: TFDS sorts the examples through its on-disk buckets.
  monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
  builder = build(synthetic_dataset_builder.Builder, tmp_path / "tfds", config=config)
  check_same_as_writer(builder, tmp_path / "prepared", synthetic.SPLITS)


def test_synthetic_demo_config_is_the_data_of_make_demo():
  """The builder's `demo` config renders what scripts/demo.py renders for configs/synthetic.py:
  the same SyntheticConfig (every field), T, t, spacing and image size."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  demo = load_config("synthetic")
  (tfds_demo,) = [c for c in synthetic_dataset_builder.Builder.BUILDER_CONFIGS if c.name == "demo"]
  assert tfds_demo.source_config() == synthetic.from_fields(
      demo.demo_data, image_size=tuple(demo.dataset.image_size))
  assert (tfds_demo.num_frames, tfds_demo.window, tfds_demo.spacing,
          tuple(tfds_demo.image_size)) == (demo.model.num_frames, demo.model.window,
                                           demo.dataset.spacing, tuple(demo.dataset.image_size))


def test_input_pipeline_reads_tfds_output(fpha_built, smoke_config):
  from htt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  _, builder, prepared = fpha_built
  config = smoke_config.copy_and_resolve_references()
  config.dataset.data_dir = builder.data_dir
  config.model.num_frames, config.model.window = WINDOWING["num_frames"], WINDOWING["window"]
  config.dataset.image_size = SIZE
  config.dataset.num_parallel_calls = 1
  # Training reads the same manifest keys (checked equal above) and the same files; building its
  # augmentation graph takes seconds, so only its epoch length is checked here.
  manifest = input_pipeline.load_manifest(builder.data_dir, "train", config)
  assert input_pipeline.steps_per_epoch(manifest, 2) == input_pipeline.steps_per_epoch(
      input_pipeline.load_manifest(str(prepared), "train", config), 2)
  batches = list(input_pipeline.create_dataset(config, "test", train=False, process_index=0,
                                               process_count=1).as_numpy_iterator())
  assert batches[0]["image"].shape == (config.eval_batch_size, 16, *SIZE, 3)
  ids = [v for b in batches for v, valid in zip(b["video_id"], b["valid"]) if valid]
  assert ids == [b"Subject_1/clean_glasses/1"] * 2  # 3 frames: starts 0 and 1


def test_max_examples_per_split_gives_a_consistent_manifest(fpha_built, tmp_path):
  raw, _, prepared = fpha_built
  builder = build(fpha_dataset_builder.Builder, tmp_path, raw, max_examples_per_split=3)
  manifest = schema.load_manifest(builder.data_dir, "train")
  full = schema.load_manifest(str(prepared), "train")
  assert manifest["records"] == 3 and manifest["clips"]["eval"] == 3
  # The first video of 40 frames has 4 windows at T=16, t=4: the prefix is all in it.
  assert manifest["videos"]["ids"] == full["videos"]["ids"][:1]
  clips = list(reader.read_clips(builder.data_dir, "train", all_train_offsets=True))
  assert len(clips) == manifest["clips"]["train"]
  everything = {tuple(c["frame_idx"]) for c in reader.read_clips(str(prepared), "train",
                                                                 all_train_offsets=True)}
  assert {tuple(c["frame_idx"]) for c in clips} <= everything


def test_missing_or_wrong_manual_dir(tmp_path):
  with pytest.raises(AssertionError, match="(?s)does not exist or is empty.*skeleton.txt"):
    build(fpha_dataset_builder.Builder, tmp_path / "data", tmp_path / "nowhere")
  (tmp_path / "wrong").mkdir()
  (tmp_path / "wrong" / "README").write_text("not FPHA")
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "wrong" / fpha.SPLIT_FILE)):
    build(fpha_dataset_builder.Builder, tmp_path / "data", tmp_path / "wrong")
  assert not list((tmp_path / "data").glob("fpha/tiny/1.0.0*"))


@pytest.mark.parametrize("case", ["corrupt image", "nan joint"])
def test_bad_data_names_the_file(tmp_path, case):
  raw = rl.write_fpha(tmp_path / "raw", videos=rl.FPHA_VIDEOS[:1] + rl.FPHA_VIDEOS[2:])
  video = raw / "Video_files_480/Subject_1/charge_cell_phone/1/color/color_0012.jpeg"
  skeleton = raw / "Hand_pose_annotation_v1/Subject_1/charge_cell_phone/1/skeleton.txt"
  if case == "corrupt image":
    video.write_bytes(video.read_bytes()[:200])
    message = str(video)
  else:
    lines = skeleton.read_text().splitlines()
    lines[2] = " ".join(["2"] + ["nan"] * 63)
    skeleton.write_text("\n".join(lines) + "\n")
    message = f"{skeleton}:3:"
  with pytest.raises(ValueError, match=message):
    build(fpha_dataset_builder.Builder, tmp_path / "data", raw)
  # Nothing that looks like a finished dataset is left behind.
  assert not list((tmp_path / "data").glob("fpha/tiny/1.0.0*"))


def test_build_command_finds_the_builder(fpha_built, tmp_path):
  """`python -m data_pipeline.tfds build` (TFDS's `build` command; `tfds` itself needs Beam).

  Run in this process (a fresh interpreter costs ~5 s of TensorFlow import): the same parsing,
  discovery of data_pipeline/tfds/fpha/fpha_dataset_builder.py and generation as the command.
  """
  from data_pipeline.tfds import __main__ as command  # pylint: disable=g-import-not-at-top
  raw, builder, _ = fpha_built
  config = json.dumps(dict(name="tiny", image_size=list(SIZE), **WINDOWING))
  args = command.parse_flags(["python -m data_pipeline.tfds", "build",
                             str(ROOT / "data_pipeline" / "tfds" / "fpha"), f"--manual_dir={raw}",
                             f"--data_dir={tmp_path}", f"--config={config}"])
  try:
    command.main(args)
  finally:  # TFDS imported the builder as the top-level package `fpha`
    for name in ("fpha.fpha_dataset_builder", "fpha"):
      sys.modules.pop(name, None)
  built = tmp_path / "fpha" / "tiny" / "1.0.0"
  for split in ("train", "test"):
    a = records(sorted(built.glob(f"fpha-{split}.tfrecord-*")))
    b = records(builder.info.splits[split].filepaths)
    assert a == b
    assert schema.load_manifest(str(built), split)["records"] == len(a)


def test_beam_generation_same_records(fpha_built, tmp_path):
  """Beam generation (each video encoded on a worker) writes what local generation writes."""
  beam = pytest.importorskip("apache_beam")  # the `beam` extra, installed by `make`
  raw, _, prepared = fpha_built
  options = beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner", "--direct_num_workers=1"])
  builder = build(fpha_dataset_builder.Builder, tmp_path, raw, beam_options=options)
  check_same_as_writer(builder, prepared, ("train", "test"))


def test_tfds_executable_builds_with_beam(fpha_built, tmp_path):
  """The `tfds` command users type (it needs the `beam` extra), with a Beam runner."""
  pytest.importorskip("apache_beam")
  raw, builder, _ = fpha_built
  config = json.dumps(dict(name="tiny", image_size=list(SIZE), **WINDOWING))
  tfds_command = os.path.join(os.path.dirname(sys.executable), "tfds")
  result = subprocess.run(
      [tfds_command, "build", str(ROOT / "data_pipeline" / "tfds" / "fpha"), f"--manual_dir={raw}",
       f"--data_dir={tmp_path}", f"--config={config}",
       "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=1"],
      capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  built = tmp_path / "fpha" / "tiny" / "1.0.0"
  for split in ("train", "test"):
    a = records(sorted(built.glob(f"fpha-{split}.tfrecord-*")))
    assert a == records(builder.info.splits[split].filepaths)
    assert schema.load_manifest(str(built), split)["records"] == len(a)
