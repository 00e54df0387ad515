"""Damaged data stops a run with an error naming the shard and the record, never a silent skip.

Each test copies a tiny prepared dataset (synthetic, 72x128, T = t = 8, four shards per split)
and damages one shard the way disks and people do: cut in half, bytes flipped inside a record
(its CRC no longer matches), an image replaced by bytes of the same length that do not decode
(the record's CRC is valid, so only decoding finds it), a shard deleted after the manifest was
written. The expected record index and byte offset come from the test's own walk of the TFRecord
framing, not from the code under test. scripts/train.py must end with one `error: ...` line
(no traceback) and write no checkpoint.
"""

import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import ROOT, load_config, prepare_tiny_synthetic
from data_pipeline import reader, schema
from htt_jax import input_pipeline
from process_utils import env_for

SHARD = "train-00001-of-00004.tfrecord"  # The damaged shard: the second of four (one video each).


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("faults_data")
  prepare_tiny_synthetic(out, ("train", "test"), min_shards=3)
  return out


@pytest.fixture
def data_dir(clean_dir, tmp_path):
  out = tmp_path / "data"
  shutil.copytree(clean_dir, out)
  return out


def _config(data_dir, **overrides):
  config = load_config("smoke")
  config.dataset.data_dir = str(data_dir)
  config.model.num_frames = config.model.window = 8
  config.dataset.shuffle_buffer = 8
  config.dataset.num_parallel_calls = 1
  config.dataset.prefetch = 1
  for key, value in overrides.items():
    config[key] = value
  return config


def _record_offsets(path):
  """Start of every record: each is an 8-byte little-endian length, 4-byte CRC, data, 4-byte CRC."""
  data = path.read_bytes()
  offsets, at = [], 0
  while at < len(data):
    offsets.append(at)
    at += int.from_bytes(data[at:at + 8], "little") + 16
  assert at == len(data) and len(offsets) > 3, "the fixture's shard is not a TFRecord file"
  return offsets


def _truncate_half(path):
  """Cuts the file in half; returns the first record that no longer ends inside it."""
  offsets, size = _record_offsets(path), path.stat().st_size
  path.write_bytes(path.read_bytes()[:size // 2])
  index = max(i for i, o in enumerate(offsets) if o <= size // 2)
  return index, offsets[index]


def _flip_bytes(path, index=2):
  """Inverts 8 bytes inside record `index`'s data: its CRC no longer matches; size unchanged."""
  offset = _record_offsets(path)[index]
  data = bytearray(path.read_bytes())
  for i in range(offset + 112, offset + 120):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))
  return index, offset


def _undecodable_image(path, index=3):
  """Record `index`'s first image replaced by as many zero bytes (no image format), rewritten
  with valid CRCs: the file keeps its size and reads back, only decoding fails."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
  example = tf.train.Example.FromString(records[index])
  image = example.features.feature["image"].bytes_list.value
  image[0] = bytes(len(image[0]))
  records[index] = example.SerializeToString(deterministic=True)
  size = path.stat().st_size
  with tf.io.TFRecordWriter(str(path)) as f:
    for record in records:
      f.write(record)
  assert path.stat().st_size == size
  return index, _record_offsets(path)[index]


def _names(error, path, index, offset):
  message = str(error)
  assert str(path) in message and f"record {index} (byte offset {offset})" in message, message
  assert "\n" not in message and "node" not in message and "[Op:" not in message, message


def _drain(batches):
  for _ in batches:
    pass


def _train_script(data_dir, workdir, **overrides):
  """scripts/train.py on the fixture (smoke model, T = t = 8); returns (exit code, stderr)."""
  flags = {"dataset.data_dir": data_dir, "model.num_frames": 8, "model.window": 8,
           "num_train_steps": 3, "checkpoint_every_steps": 1, "dataset.num_parallel_calls": 1,
           "dataset.prefetch": 1, "dataset.shuffle_buffer": 8, **overrides}
  command = [sys.executable, str(ROOT / "scripts" / "train.py"),
             f"--config={ROOT / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
             *(f"--config.{k}={v}" for k, v in flags.items())]
  done = subprocess.run(command, capture_output=True, text=True, env=env_for(), cwd=ROOT,
                        timeout=300, check=False)
  return done.returncode, done.stderr


def _one_error_line(rc, stderr):
  """Exit 1, no traceback, and the last line is the error (absl's log lines may come before)."""
  assert rc == 1 and "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), stderr[-3000:]
  return last


def _no_checkpoint(workdir):
  folder = workdir / "checkpoints"
  assert not folder.exists() or not any(p.name.isdigit() for p in folder.iterdir())


def test_intact_data_reads_through_the_checks(clean_dir):
  config = _config(clean_dir)
  paths = schema.shard_paths(str(clean_dir), "train", input_pipeline.load_manifest(
      str(clean_dir), "train", config))
  assert schema.find_damage(paths, (72, 128)) is None
  batch = next(input_pipeline.train_batches(config, num_epochs=1))
  assert batch["image"].shape == (2, 8, 72, 128, 3)


def test_a_shard_cut_in_half_is_an_error_at_start(data_dir, tmp_path):
  index, offset = _truncate_half(data_dir / SHARD)
  with pytest.raises(schema.DataError, match="bytes but") as error:
    input_pipeline.load_manifest(str(data_dir), "train", _config(data_dir))
  _names(error.value, data_dir / SHARD, index, offset)
  with pytest.raises(schema.DataError):
    reader.read_clips(str(data_dir), "train")
  # The script: one line naming the shard, before anything is compiled or written.
  workdir = tmp_path / "run"
  last = _one_error_line(*_train_script(data_dir, workdir))
  assert str(data_dir / SHARD) in last and f"record {index} (byte offset {offset})" in last
  _no_checkpoint(workdir)


def test_flipped_bytes_name_the_shard_and_record(data_dir, tmp_path):
  index, offset = _flip_bytes(data_dir / SHARD)
  config = _config(data_dir)
  input_pipeline.load_manifest(str(data_dir), "train", config)  # same size: found when read
  for batches in (input_pipeline.train_batches(config, num_epochs=1),
                  input_pipeline.eval_batches(config, "train"),
                  reader.read_clips(str(data_dir), "train")):
    with pytest.raises(schema.DataError, match="corrupt or truncated") as error:
      _drain(batches)
    _names(error.value, data_dir / SHARD, index, offset)
  with pytest.raises(schema.DataError, match="corrupt or truncated") as error:
    input_pipeline.train_batches(config, start_step=5)  # resuming with 'files' counts clips first
  _names(error.value, data_dir / SHARD, index, offset)
  # The script fails on its first batch (every shard's record 1 is bad, so whichever shard the
  # seeded order reads first): no step runs, no checkpoint.
  for name in os.listdir(data_dir):
    if name.startswith("train-") and name != SHARD:
      _flip_bytes(data_dir / name, index=1)
  workdir = tmp_path / "run"
  last = _one_error_line(*_train_script(data_dir, workdir))
  assert "train-0000" in last and "record " in last and "corrupt or truncated" in last, last
  _no_checkpoint(workdir)
  assert not (workdir / "train_metrics.jsonl").exists() or not (
      workdir / "train_metrics.jsonl").read_text()


def test_an_image_that_does_not_decode_names_the_shard_and_record(data_dir):
  index, offset = _undecodable_image(data_dir / SHARD)
  config = _config(data_dir)
  input_pipeline.load_manifest(str(data_dir), "train", config)  # same size, valid CRCs
  for batches in (input_pipeline.train_batches(config, num_epochs=1),
                  input_pipeline.eval_batches(config, "train"),
                  reader.read_clips(str(data_dir), "train")):
    with pytest.raises(schema.DataError, match="does not parse or decode") as error:
      _drain(batches)
    _names(error.value, data_dir / SHARD, index, offset)


def test_a_removed_shard_is_an_error_at_start(clean_dir, data_dir, tmp_path):
  (data_dir / SHARD).unlink()
  with pytest.raises(FileNotFoundError, match=SHARD):
    input_pipeline.load_manifest(str(data_dir), "train")
  with pytest.raises(FileNotFoundError, match=SHARD):
    reader.read_clips(str(data_dir), "train")
  with pytest.raises(FileNotFoundError, match=SHARD):
    reader.mean_joints3d(str(data_dir), "train")
  # The evaluation split is read only after training, but checked before it starts.
  shutil.copy(clean_dir / SHARD, data_dir / SHARD)  # training data intact again
  test_shard = data_dir / "test-00002-of-00004.tfrecord"
  test_shard.unlink()
  workdir = tmp_path / "run"
  last = _one_error_line(*_train_script(data_dir, workdir, eval_split="test"))
  assert str(test_shard) in last and "missing" in last, last
  _no_checkpoint(workdir)


def test_a_read_error_with_intact_shards_keeps_tf_s_error(clean_dir):
  """Not the data's fault (every record reads): the original error, for a bug report."""
  def failing():
    raise tf.errors.InvalidArgumentError(None, None, "something else")
    yield  # pylint: disable=unreachable

  paths = sorted(str(p) for p in clean_dir.glob("train-*.tfrecord"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="something else"):
    next(schema.Checked(failing(), paths, (72, 128)))
