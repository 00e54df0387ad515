"""The on-disk data format: records (one storage window of a video each), shard names, manifests.

Why windows and not clips: the reference's training clips start at every sub-sampled position
0..t-1 of each block of T sub-sampled frames (reference.md §3.4), so storing every clip would copy
each frame ~t times. A record holds the sub-sampled frames [T*k, T*k + T + t - 1) of one parity p
(raw frames first + p + spacing*i), from which the clip at training offset m (0 <= m < t) is frames
[m, m + T). Each frame is stored at most (T + t - 1) / T ~ 1.12 times. Evaluation clips are offset 0
(starts 0, 1, 256, 257, ... for spacing 2, T = 128).

A record shorter than T + t - 1 frames ends at the end of its video; a clip that runs past it is
padded by repeating its last valid frame with not_padding = 0 (reference.md §3.5).

Record features (n = frames stored, J joints, K hands):
  video_id, subject: bytes; video_index: position of the video in its split;
  parity, block: the window's place in the video; start_frame: raw frame number of frame 0;
  num_train_offsets: how many offsets m are training clip starts (min(t, frames left));
  frame_idx (n,) int64; image (n,) encoded JPEG/PNG bytes at the stored size;
  joints3d (n*J*3) float m; joints2d (n*J*2) float px; intrinsics (9,) float;
  hand_valid (n*K) int64; object (n,) int64; action () int64 (-1 unlabeled);
  num_joints, num_hands, height, width: ints.

This module is the one owner of the on-disk format: the records (above), the shard names and the
manifest (below). The writer, the TFDS builders, `reader.read_clips`, the tf.data pipeline and
evaluation all go through it; no other module parses a record or a manifest.

Files of a split in a data folder:
  {split}-{i:05d}-of-{n:05d}.tfrecord  the shards, whole videos in split order (the TFDS builders
      use TFDS's own shard names, listed in the manifest like ours).
  {split}.manifest.json  present only once the split is complete. Keys: format_version, dataset,
      num_frames (T), window (t), spacing, image_size [H, W], image_format, jpeg_quality (the
      CONFIG_KEYS: what a record is), split, num_joints, num_hands, vocabulary {actions,
      objects}, videos {count, ids}, clips {train, eval}, frames {raw, stored}, records,
      shards [{file, records, videos, stored_frames, bytes}], bytes, bytes_per_stored_frame;
      TFDS adds tfds {name}.

Damaged files (a shard truncated, overwritten or with flipped bytes after the manifest was
written) are a DataError naming the shard and the record, never a silent skip: `shard_paths`
checks at start that each listed shard exists with the manifest's byte size; `Checked` wraps a
reading iterator and, when TensorFlow fails (its messages name neither the file nor the record),
reads the shards again with `find_damage` to say which record of which file is bad.

A data folder may be a URL (gs://bucket/fpha): manifests and plans are read, checked and written
through htt_jax/storage.py (etils.epath), records through TensorFlow's own file system.
"""

import json
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from htt_jax import config_lib
from htt_jax import storage


class DataError(config_lib.ConfigError):
  """A prepared split's files are damaged or missing; the message names the file (and record).

  A ConfigError, so scripts end with one `error: ...` line (htt_jax/cli.py): the data is the
  user's input, and the fix (prepare the split again) is theirs.
  """

SCHEMA_VERSION = 1

FEATURES = {
    "video_id": tf.io.FixedLenFeature([], tf.string),
    "subject": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "video_index": tf.io.FixedLenFeature([], tf.int64),
    "parity": tf.io.FixedLenFeature([], tf.int64),
    "block": tf.io.FixedLenFeature([], tf.int64),
    "start_frame": tf.io.FixedLenFeature([], tf.int64),
    "num_train_offsets": tf.io.FixedLenFeature([], tf.int64),
    "frame_idx": tf.io.VarLenFeature(tf.int64),
    "image": tf.io.VarLenFeature(tf.string),
    "joints3d": tf.io.VarLenFeature(tf.float32),
    "joints2d": tf.io.VarLenFeature(tf.float32),
    "intrinsics": tf.io.FixedLenFeature([9], tf.float32),
    "hand_valid": tf.io.VarLenFeature(tf.int64),
    "object": tf.io.VarLenFeature(tf.int64),
    "action": tf.io.FixedLenFeature([], tf.int64),
    "num_joints": tf.io.FixedLenFeature([], tf.int64),
    "num_hands": tf.io.FixedLenFeature([], tf.int64),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def _int64(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel()))


def _float(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel()))


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def make_example(record: Mapping) -> bytes:
  """Serialises one window (numpy arrays, encoded images as bytes) to a tf.train.Example."""
  n = len(record["frame_idx"])
  joints3d = np.asarray(record["joints3d"], np.float32)
  hand_valid = np.asarray(record["hand_valid"]).reshape(n, -1)
  height, width = record["image_size"]
  feature = {
      "video_id": _bytes([record["video_id"].encode()]),
      "subject": _bytes([record.get("subject", "").encode()]),
      "video_index": _int64([record["video_index"]]),
      "parity": _int64([record["parity"]]),
      "block": _int64([record["block"]]),
      "start_frame": _int64([record["frame_idx"][0]]),
      "num_train_offsets": _int64([record["num_train_offsets"]]),
      "frame_idx": _int64(record["frame_idx"]),
      "image": _bytes(record["images"]),
      "joints3d": _float(joints3d),
      "joints2d": _float(record["joints2d"]),
      "intrinsics": _float(record["intrinsics"]),
      "hand_valid": _int64(hand_valid),
      "object": _int64(record["object"]),
      "action": _int64([record["action"]]),
      "num_joints": _int64([joints3d.shape[1]]),
      "num_hands": _int64([hand_valid.shape[1]]),
      "height": _int64([height]),
      "width": _int64([width]),
  }
  # deterministic: map keys sorted, so a record's bytes do not depend on the process's hash seed.
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def parse_record(serialized):
  """Parses one serialized record into dense tensors (images still encoded)."""
  p = tf.io.parse_single_example(serialized, FEATURES)
  dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in p.items()}
  n = tf.shape(dense["frame_idx"])[0]
  j, k = tf.cast(dense["num_joints"], tf.int32), tf.cast(dense["num_hands"], tf.int32)
  dense["joints3d"] = tf.reshape(dense["joints3d"], [n, j, 3])
  dense["joints2d"] = tf.reshape(dense["joints2d"], [n, j, 2])
  dense["hand_valid"] = tf.reshape(dense["hand_valid"], [n, k])
  dense["intrinsics"] = tf.reshape(dense["intrinsics"], [3, 3])
  return dense


def parse_num_train_offsets(serialized):
  """A record's num_train_offsets alone: counting training clips parses nothing else."""
  spec = {"num_train_offsets": FEATURES["num_train_offsets"]}
  return tf.io.parse_single_example(serialized, spec)["num_train_offsets"]


def record_arrays(serialized: bytes) -> Dict[str, Any]:
  """One record as numpy, outside tf.data: what parse_record gives, without TensorFlow ops.

  Scalars are Python values, image a list of encoded bytes, per-frame fields shaped (n, ...) as
  int64 or float32 (hand_valid (n, K) int64), intrinsics (3, 3).
  """
  proto = tf.train.Example.FromString(serialized).features.feature
  values = {}
  for name, spec in FEATURES.items():
    kind = proto[name].WhichOneof("kind")
    listed = list(getattr(proto[name], kind).value) if kind else []
    scalar = isinstance(spec, tf.io.FixedLenFeature) and not spec.shape
    values[name] = listed[0] if scalar else listed
  n, j, k = len(values["frame_idx"]), values["num_joints"], values["num_hands"]
  ints = lambda name, *shape: np.asarray(values[name], np.int64).reshape(shape)
  floats = lambda name, *shape: np.asarray(values[name], np.float32).reshape(shape)
  values.update(frame_idx=ints("frame_idx", n), object=ints("object", n),
                hand_valid=ints("hand_valid", n, k),
                joints3d=floats("joints3d", n, j, 3), joints2d=floats("joints2d", n, j, 2),
                intrinsics=floats("intrinsics", 3, 3))
  return values


def cut_clip(record, offset, num_frames: int):
  """The clip of `num_frames` frames starting at `offset` of a parsed record (images encoded).

  Frames past the record's end repeat its last frame with not_padding = 0. Returns frame_idx,
  image (T,) encoded, joints3d, joints2d, joints25d (u, v, Z), intrinsics (T,3,3), hand_valid,
  object, not_padding (T,) float32, action, video_id, video_index, start_frame.
  """
  n = tf.shape(record["frame_idx"])[0]
  positions = tf.cast(offset, tf.int32) + tf.range(num_frames)
  index = tf.minimum(positions, n - 1)
  take = lambda x: tf.gather(x, index)
  joints3d, joints2d = take(record["joints3d"]), take(record["joints2d"])
  return {
      "frame_idx": take(record["frame_idx"]),
      "image": take(record["image"]),
      "joints3d": joints3d,
      "joints2d": joints2d,
      "joints25d": tf.concat([joints2d, joints3d[..., 2:]], axis=-1),
      "intrinsics": tf.tile(record["intrinsics"][None], [num_frames, 1, 1]),
      "hand_valid": take(record["hand_valid"]),
      "object": take(record["object"]),
      "not_padding": tf.cast(positions < n, tf.float32),
      "action": record["action"],
      "video_id": record["video_id"],
      "video_index": record["video_index"],
      "start_frame": take(record["frame_idx"])[0],
  }


def decode_frame(encoded):
  """One JPEG or PNG -> (H, W, 3) uint8, the pixels Pillow decodes from the same bytes.

  The reference reads its frames with PIL (reference.md §1.1, §3.3). TensorFlow's JPEG decoder
  defaults to libjpeg's fast integer IDCT, which differs from Pillow's (the accurate one) in most
  pixels, by up to 16 levels on a textured frame; with INTEGER_ACCURATE the two agree bit for bit
  (tests/test_writer.py), for about 3% more decoding time."""
  return tf.cond(tf.io.is_jpeg(encoded),
                 lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                 lambda: tf.io.decode_png(encoded, channels=3))


def decode_images(encoded, height: int, width: int):
  """(T,) JPEG/PNG bytes -> (T, H, W, 3) uint8 (decode_frame); the shape is checked against the
  manifest's."""
  images = tf.map_fn(decode_frame, encoded,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return tf.ensure_shape(images, [None, height, width, 3])


# ---------------------------------------------------------------------------------------------
# Shard names and the manifest (module docstring).

MANIFEST_SUFFIX = ".manifest.json"
# What a record is: every manifest (and the writer's plan) in one data folder must agree on these,
# or its splits would disagree on how clips were cut and frames stored.
CONFIG_KEYS = ("format_version", "dataset", "num_frames", "window", "spacing", "image_size",
               "image_format", "jpeg_quality")


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def manifest_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, split + MANIFEST_SUFFIX)


def record_config(dataset: str, num_frames: int, window: int, spacing: int,
                  image_size: Sequence[int], image_format: str,
                  jpeg_quality) -> Dict[str, Any]:
  """The CONFIG_KEYS of a manifest, in their order; jpeg_quality is None for PNG frames."""
  return {"format_version": SCHEMA_VERSION, "dataset": dataset, "num_frames": num_frames,
          "window": window, "spacing": spacing, "image_size": [int(x) for x in image_size],
          "image_format": image_format,
          "jpeg_quality": jpeg_quality if image_format == "jpeg" else None}


def vocabulary_json(vocabulary) -> Dict[str, List[str]]:
  """The manifest's vocabulary from a mapping, an object with `actions` and `objects`, or an
  (actions, objects) pair."""
  if vocabulary is None:
    return {"actions": [], "objects": []}
  if isinstance(vocabulary, Mapping):
    actions, objects = vocabulary.get("actions", []), vocabulary.get("objects", [])
  elif hasattr(vocabulary, "actions"):
    actions, objects = vocabulary.actions, getattr(vocabulary, "objects", [])
  else:
    actions, objects = vocabulary
  return {"actions": [str(a) for a in actions], "objects": [str(o) for o in objects]}


def make_manifest(config: Mapping[str, Any], split: str, *, num_joints: int, num_hands: int,
                  vocabulary, video_ids: Sequence[str], clips: Sequence[int], raw_frames: int,
                  shards: List[Dict[str, Any]], **extra) -> Dict[str, Any]:
  """A split's manifest: `config` (record_config), then the split's counts (module docstring).

  clips: (training clip starts, evaluation clips); shards: {file, records, videos,
  stored_frames, bytes} each, in order; extra: keys after the standard ones (TFDS's tfds).
  """
  stored = sum(s["stored_frames"] for s in shards)
  total_bytes = sum(s["bytes"] for s in shards)
  return dict(
      config, split=split, num_joints=num_joints, num_hands=num_hands,
      vocabulary=vocabulary_json(vocabulary),
      videos={"count": len(video_ids), "ids": list(video_ids)},
      clips={"train": clips[0], "eval": clips[1]},
      frames={"raw": raw_frames, "stored": stored},
      records=sum(s["records"] for s in shards), shards=shards, bytes=total_bytes,
      bytes_per_stored_frame=total_bytes / max(1, stored), **extra)


def write_manifest(data_dir: str, split: str, manifest: Mapping[str, Any]) -> None:
  """Writes the manifest last and atomically: its presence means the split is complete."""
  storage.write_json(manifest_path(data_dir, split), manifest, indent=1, sort_keys=False)


def load_manifest(data_dir: str, split: str) -> Dict[str, Any]:
  """The split's manifest; a clear error if the split is unfinished or of another version."""
  path = manifest_path(data_dir, split)
  if not storage.exists(path):
    raise FileNotFoundError(f"no manifest: prepare_data.py did not finish for split {split!r} "
                            f"(expected {path})")
  manifest = read_json(path)
  if manifest.get("format_version") != SCHEMA_VERSION:
    raise DataError(f"{path}: format_version {manifest.get('format_version')} but this code "
                    f"reads version {SCHEMA_VERSION}; prepare the data again")
  return manifest


def read_json(path: str) -> Dict[str, Any]:
  """A manifest or writer's plan as a dict; DataError naming the file when it does not parse (a
  torn or hand-edited file) or is not a JSON object."""
  try:
    value = json.loads(storage.read_text(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path} is damaged ({e}): prepare the split again") from None
  if not isinstance(value, dict):
    raise DataError(f"{path} holds a JSON {type(value).__name__}, expected an object: prepare "
                    "the split again")
  return value


def check_record_config(path: str, config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the key if the manifest (or writer's plan) at `path` was written with
  other CONFIG_KEYS than `config`: one folder must not mix two record formats."""
  other = read_json(path)
  for key in CONFIG_KEYS:
    if other.get(key) != config[key]:
      raise ValueError(f"{path} was written with {key}={other.get(key)!r} but this run has "
                       f"{key}={config[key]!r}: use another output_dir, or delete that "
                       f"dataset's files to start again")


def shard_paths(data_dir: str, split: str, manifest: Mapping[str, Any]) -> List[str]:
  """The manifest's shards in order (entries are file names or {'file': name, ...}).

  Each must exist (a missing one would silently shorten the split: FileNotFoundError) and have
  the manifest's `bytes` where it lists them (a stat, no reading): a shard cut at a record
  boundary reads back without any TF error, so only its size shows it (DataError, with the first
  bad record when one is found).
  """
  listed = manifest_path(data_dir, split)
  paths = []
  for entry in manifest["shards"]:
    path = os.path.join(data_dir, entry if isinstance(entry, str) else entry["file"])
    if not storage.exists(path):
      raise FileNotFoundError(f"{path} is listed in {listed} but missing: prepare the split "
                              f"again")
    expected = entry.get("bytes") if isinstance(entry, Mapping) else None
    size = storage.size(path)
    if expected is not None and size != expected:
      found = (find_damage([path], shards=[entry]) or "").replace(f"{path}: ", "", 1)
      raise DataError(f"{path} holds {size} bytes but {listed} lists {expected}"
                      + (f" ({found})" if found else "")
                      + ": the shard changed after it was written; prepare the split again")
    paths.append(path)
  return paths


# ---------------------------------------------------------------------------------------------
# Finding a damaged record (module docstring). Only ever run after a read failed, so it may read
# the files again; the pipelines themselves carry no extra tensors and keep their exact order.

# What TF raises for a bad record: DataLossError (CRC mismatch, truncated), InvalidArgumentError
# (a record that does not parse, an image that does not decode or has the wrong size),
# NotFoundError (a shard removed while running).
READ_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError)


def _tf_message(error: BaseException) -> str:
  """TF's message on one line, without the graph's names: '{{function_node ...}}', '[[{{node
  ...}}]]', '[Op:...]' and tf.data's 'Error in user-defined function ... Iterator::...:'."""
  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\[\[.*?\]\]|\{\{function_node [^}]*\}\}", " ", text, flags=re.S)
  text = re.sub(r"\[Op:[^\]]*\].*$", "", text, flags=re.S)
  text = re.sub(r"^.*Iterator::\S+: ", "", text, flags=re.S)
  return " ".join(text.split())


def _record_offset(path: str, index: int) -> int:
  """Byte offset of record `index` of a TFRecord file, from the headers of the records before it
  (8-byte length, 4-byte CRC, data, 4-byte CRC each), which read back intact."""
  offset = 0
  with tf.io.gfile.GFile(path, "rb") as f:  # TensorFlow's file, read by TensorFlow's file system
    for _ in range(index):
      f.seek(offset)
      offset += int.from_bytes(f.read(8), "little") + 16
  return offset


def find_damage(paths: Sequence[str], image_size: Optional[Sequence[int]] = None,
                shards: Optional[Sequence[Any]] = None) -> Optional[str]:
  """'PATH: record I (byte offset O) ...' for the first record of `paths` (in order) that does not
  read back (CRC, truncation) or parse, or, with image_size (H, W), whose images do not decode to
  that size; also a missing file or a record count other than the manifest's `shards` entry.
  None when every record is fine."""
  def check(serialized):
    record = parse_record(serialized)
    if image_size is not None:
      return tf.shape(decode_images(record["image"], *image_size))[0]
    return tf.shape(record["frame_idx"])[0]

  for i, path in enumerate(paths):
    if not storage.exists(path):
      return f"{path} is missing"
    records = tf.data.TFRecordDataset(path).map(check, num_parallel_calls=2, deterministic=True)
    count = 0
    try:
      for _ in records.as_numpy_iterator():
        count += 1
    except tf.errors.DataLossError as e:
      return (f"{path}: record {count} (byte offset {_record_offset(path, count)}) is corrupt "
              f"or truncated ({_tf_message(e)})")
    except tf.errors.InvalidArgumentError as e:
      what = "does not parse or decode" if image_size is not None else "does not parse"
      return (f"{path}: record {count} (byte offset {_record_offset(path, count)}) {what} "
              f"({_tf_message(e)})")
    entry = shards[i] if shards is not None and i < len(shards) else None
    expected = entry.get("records") if isinstance(entry, Mapping) else None
    if expected is not None and count != expected:
      return f"{path} holds {count} records, the manifest lists {expected}"
  return None


def located_error(error: BaseException, paths: Sequence[str],
                  image_size: Optional[Sequence[int]] = None,
                  shards: Optional[Sequence[Any]] = None) -> BaseException:
  """The DataError naming the file and record behind TF's `error` (one of READ_ERRORS), or
  `error` itself when no record is bad (then it is not the data's fault: a bug to report).
  A DataLossError is about the bytes, so only those are checked, not the (slower) decoding."""
  if isinstance(error, tf.errors.DataLossError):
    image_size = None
  logging.warning("reading the split failed (%s); reading its %d shards again to find the bad "
                  "record", _tf_message(error), len(paths))
  found = find_damage(paths, image_size, shards)
  if found is None:
    return error
  return DataError(f"{found}: the shard changed after scripts/prepare_data.py wrote it; prepare "
                   "the split again")


class Checked:
  """An iterator over a tf.data pipeline that reads `paths`: a READ_ERRORS failure becomes
  located_error's DataError (raised outside the except block, so it holds no reference to the
  pipeline's frames and the pipeline is released at once)."""

  def __init__(self, iterator: Iterator, paths: Sequence[str],
               image_size: Optional[Sequence[int]] = None,
               shards: Optional[Sequence[Any]] = None):
    self._iterator, self._paths = iterator, list(paths)
    self._image_size, self._shards = image_size, shards

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      raise StopIteration
    try:
      return next(self._iterator)
    except READ_ERRORS as e:
      error = e
    self._iterator = None
    error = located_error(error, self._paths, self._image_size, self._shards)
    raise error
