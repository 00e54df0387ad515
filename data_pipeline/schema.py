"""The TFRecord schema: one record = one storage window of a video, and how clips are cut from it.

Why windows and not clips: the reference's training clips start at every sub-sampled position
0..t-1 of each block of T sub-sampled frames (facts 3.4), so storing every clip would copy each
frame ~t times. A record holds the sub-sampled frames [T*k, T*k + T + t - 1) of one parity p (raw
frames first + p + spacing*i), from which the clip at training offset m (0 <= m < t) is frames
[m, m + T). Each frame is stored at most (T + t - 1) / T ~ 1.12 times. Evaluation clips are offset 0
(starts 0, 1, 256, 257, ... for spacing 2, T = 128).

A record shorter than T + t - 1 frames ends at the end of its video; a clip that runs past it is
padded by repeating its last valid frame with not_padding = 0 (facts 3.5).

Record features (n = frames stored, J joints, K hands):
  video_id, subject: bytes; video_index: position of the video in its split;
  parity, block: the window's place in the video; start_frame: raw frame number of frame 0;
  num_train_offsets: how many offsets m are training clip starts (min(t, frames left));
  frame_idx (n,) int64; image (n,) encoded JPEG/PNG bytes at the stored size;
  joints3d (n*J*3) float m; joints2d (n*J*2) float px; intrinsics (9,) float;
  hand_valid (n*K) int64; object (n,) int64; action () int64 (-1 unlabeled);
  num_joints, num_hands, height, width: ints.
"""

from typing import Mapping

import numpy as np
import tensorflow as tf

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


def decode_images(encoded, height: int, width: int):
  """(T,) JPEG/PNG bytes -> (T, H, W, 3) uint8; the shape is checked against the manifest's."""
  images = tf.map_fn(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False),
                     encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return tf.ensure_shape(images, [None, height, width, 3])
