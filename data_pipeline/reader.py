"""Reading prepared splits outside the training pipeline: clips for checks, joints for evaluation.

`read_clips` gives the clips of a split as numpy dicts, in the reference's order. It uses the
training reader's own pieces (schema.parse_record, decode_images, cut_clip), so what evaluation
and checks read is cut exactly as what training reads. Each record (window) is decoded once and
all of its clips are cut from the decoded frames: a window's t training clips share almost all
frames. `mean_joints3d` averages a split's stored poses (evaluation's mean-pose baseline) without
decoding a single image. Both check the shards when called (schema.shard_paths) and turn a
record TF cannot read or decode into a schema.DataError naming the shard and record.
"""

from typing import Any, Dict, Iterator, List

import numpy as np
import tensorflow as tf

from data_pipeline import schema
from data_pipeline import windowing


def _read(files: List[str], parse) -> tf.data.Dataset:
  """parse(serialized record) of every record of `files`, in file order."""
  options = tf.data.Options()
  options.deterministic = True
  # Reading is a side job (evaluation, checks): keep its threads from competing with XLA.
  options.threading.private_threadpool_size = 2
  return tf.data.TFRecordDataset(files).map(parse).prefetch(1).with_options(options)


def _records(files: List[str], height: int, width: int) -> tf.data.Dataset:
  """Parsed records with decoded images, in file order."""
  def parse(serialized):
    record = schema.parse_record(serialized)
    record["image"] = schema.decode_images(record["image"], height, width)
    return record
  return _read(files, parse)


def mean_joints3d(data_dir: str, split: str) -> np.ndarray:
  """(J, 3) mean camera-space pose over every stored frame of a split (annotations only): the
  t - 1 frames that consecutive windows share count twice."""
  manifest = schema.load_manifest(data_dir, split)
  files = schema.shard_paths(data_dir, split, manifest)
  total, count = 0.0, 0
  joints = _read(files, lambda s: schema.parse_record(s)["joints3d"])
  for frames in schema.Checked(joints.as_numpy_iterator(), files, shards=manifest["shards"]):
    total = total + frames.sum(axis=0)
    count += frames.shape[0]
  if not count:
    raise ValueError(f"{schema.manifest_path(data_dir, split)}: no frames")
  return total / count


def _to_numpy(clip: Dict[str, tf.Tensor]) -> Dict[str, Any]:
  return {
      "image": clip["image"].numpy(),
      "joints3d": clip["joints3d"].numpy().astype(np.float32),
      "joints25d": clip["joints25d"].numpy().astype(np.float32),
      "intrinsics": clip["intrinsics"].numpy().astype(np.float32),
      "not_padding": clip["not_padding"].numpy().astype(np.float32),
      "object": clip["object"].numpy().astype(np.int32),
      "action": np.asarray(clip["action"].numpy(), np.int32),
      "video_id": clip["video_id"].numpy().decode(),
      "frame_idx": clip["frame_idx"].numpy().astype(np.int64),
      "hand_valid": clip["hand_valid"].numpy().astype(bool),
  }


def _block_clips(group: List[Dict[str, tf.Tensor]], num_frames: int,
                 all_train_offsets: bool) -> Iterator[Dict[str, Any]]:
  """The clips of one video's block (its windows of every parity), start ascending."""
  windows = [windowing.Window(int(r["parity"]), int(r["block"]), r["frame_idx"].numpy(),
                              int(r["num_train_offsets"])) for r in group]
  for i, offset in windowing.clip_order(windows, all_train_offsets):
    yield _to_numpy(schema.cut_clip(group[i], offset, num_frames))


def read_clips(output_dir: str, split: str,
               all_train_offsets: bool = False) -> Iterator[Dict[str, Any]]:
  """Yields one dict of numpy arrays per clip of a split written by scripts/prepare_data.py.

  Keys: image (T,H,W,3) uint8; joints3d (T,J,3) m camera space; joints25d (T,J,3) (u px, v px,
  Z m); intrinsics (T,3,3) for the stored size; not_padding (T,) float32; object (T,) int32;
  action () int32 (-1 unlabeled); video_id str; frame_idx (T,) int64 raw frame numbers;
  hand_valid (T,K) bool.

  Without all_train_offsets: the evaluation clips (shifting windows from frames 0 and 1, ...), in
  video order then start frame ascending. With all_train_offsets: every training clip start of the
  reference, in the same order. The manifest is checked when called, not when first iterated.
  """
  manifest = schema.load_manifest(output_dir, split)
  height, width = manifest["image_size"]
  files = schema.shard_paths(output_dir, split, manifest)
  return _iterate(files, height, width, manifest["num_frames"], all_train_offsets,
                  manifest["shards"])


def _iterate(files, height, width, num_frames, all_train_offsets, shards):
  """The clips of the shards `files`, in order (the generator behind read_clips)."""
  # Videos are contiguous in the shards and windows block-major, so one block's windows (one per
  # parity) are consecutive records: buffer just those to interleave their starts.
  group, key = [], None
  if not files:
    return
  for record in schema.Checked(iter(_records(files, height, width)), files, (height, width),
                               shards):
    record_key = (int(record["video_index"]), int(record["block"]))
    if group and record_key != key:
      yield from _block_clips(group, num_frames, all_train_offsets)
      group = []
    group.append(record)
    key = record_key
  if group:
    yield from _block_clips(group, num_frames, all_train_offsets)
