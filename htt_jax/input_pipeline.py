"""tf.data input pipeline: TFRecord windows -> clips -> decoded (and augmented) host batches.

Training (the reference's epoch, reference.md §3.4): every training clip start exactly once per
epoch, in an order as mixed as the reference's shuffled DataLoader. A record (one storage window,
data_pipeline/schema.py) holds up to t training offsets of one video; emitting them one after the
other would fill batches with near-identical clips of one video for many steps (a shuffle buffer
cannot undo runs of t), and the model then chases the latest video instead of learning. So an
epoch is t passes over the records: each record has a seeded random permutation of its offsets,
and pass k cuts every record that has one at its k-th offset. Each pass reads this reader's
shards in a seeded random order, 'cycle_length' at a time, through a shuffle buffer of records;
consecutive clips therefore come from different videos. Reading a record per clip costs
(T+t-1)/T of the frames a clip needs, still encoded. Batches have the reference's drop_last, per
epoch. Only then are the T frames of each kept clip decoded and augmented (htt_jax/augment/), so
skipping (resume) and the other processes' rows cost no decoding. All randomness is keyed by
(seed, epoch, batch, row): the data is a function of the seed and the step, and resuming at a
step replays the same batches.

Host sharding (config.dataset.host_sharding):
  'batch': every process reads all shards in the same order and keeps rows
    [p * B/P, (p+1) * B/P) of each global batch; augmentation keys use the global row, so the
    global batch (clips and pixels) depends only on seed and step, not on the process count.
  'files': process p reads shards p, p + P, ... (its own stream, keyed by p); cheaper on large
    clusters; an epoch is then a pass over the process's own shards.
Evaluation: offset 0 of every record (the reference's shifting-window clips) in file order, no
augmentation; the clip list is padded to a multiple of config.eval_batch_size with copies of the
first record marked valid = 0, and every process keeps its rows of each global batch (the same
number of batches everywhere, as collective eval steps need), whatever host_sharding says.

Batch keys: image (B,T,H,W,3) uint8; intrinsics (B,T,3,3), not_padding (B,T), joints25d (B,T,J,3)
(augmented u, v px; Z m), joints3d (B,T,J,3) m, hand_valid (B,T,K) float32; object (B,T),
action (B,), video_index (B,), start_frame (B,) (raw frame number), frame_idx (B,T) int32.
Evaluation adds valid (B,) float32 and video_id (B,) bytes (drop it before device transfer).
Training with augment.on_device: the images are not yet blurred, colour-jittered or shifted (the
labels are already shifted), and the batch has the aug_* params of augment/device.py.

The config.dataset keys of the reading itself (defaults in config_lib.base_config):
shuffle_buffer (records: each holds up to T+t-1 encoded frames, ~(T+t-1) x 65 kB at 270x480),
cycle_length (shards read at once, all of them where fewer), num_parallel_calls (tf.data's
threads, also its private thread pool), prefetch, augment (augment.AugmentConfig's fields).
"""

from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import tensorflow as tf

from data_pipeline import schema
from htt_jax import augment
from htt_jax import config_lib
from htt_jax.augment import host as augment_host
from htt_jax.augment import params as augment_params

# TF must not take accelerator memory from JAX (docs/architecture.md); tensorflow-cpu has none,
# but a full tensorflow install would. Fails harmlessly when TF already initialised its devices.
for _kind in ("GPU", "TPU"):
  try:
    tf.config.set_visible_devices([], _kind)
  except (RuntimeError, ValueError):
    pass

_INT64_MAX = np.iinfo(np.int64).max


def load_manifest(data_dir: str, split: str, config=None) -> Dict[str, Any]:
  """The split's manifest (data_pipeline/schema.py reads it); with `config`, checks T, t, spacing,
  image size and joints against it. Every listed shard must exist with its listed size
  (schema.shard_paths): train.py calls this for the training and evaluation splits before it
  compiles anything, so a shard removed or cut since the manifest was written stops the run now."""
  try:
    manifest = schema.load_manifest(data_dir, split)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e} (config.dataset.data_dir={data_dir!r}); prepare the split with "
                            "scripts/prepare_data.py") from None
  if config is not None:
    check_manifest(manifest, config, schema.manifest_path(data_dir, split))
  schema.shard_paths(data_dir, split, manifest)
  return manifest


def check_manifest(manifest, config, path: str) -> None:
  """Raises ConfigError naming the config key and the manifest when the data was cut differently."""
  checks = [("model.num_frames", config.model.num_frames, "num_frames"),
            ("model.window", config.model.window, "window"),
            ("dataset.image_size", tuple(config.dataset.image_size), "image_size"),
            ("dataset.spacing", config.dataset.spacing, "spacing"),
            ("model.num_joints", config.model.num_joints, "num_joints")]
  for key, want, field in checks:
    if field not in manifest:
      continue
    have = tuple(manifest[field]) if isinstance(want, tuple) else manifest[field]
    if have != want:
      raise config_lib.ConfigError(
          f"config.{key}={want} but {path} was prepared with {field}={have}: "
          f"set --config.{key} to match or prepare the data again")


def steps_per_epoch(manifest, global_batch: int) -> int:
  """Training clip starts // global batch: the reference's DataLoader with
  drop_last (reference.md §2.6)."""
  clips = int(manifest["clips"]["train"])
  if clips < global_batch:
    raise config_lib.ConfigError(
        f"{clips} training clips are fewer than config.batch_size={global_batch}")
  return clips // global_batch


def _processes(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only when the caller did not say)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  return process_index, process_count


def _options(config) -> tf.data.Options:
  """Deterministic, and bounded so the pipeline does not fight XLA for the host's cores."""
  threads = int(config.dataset.num_parallel_calls)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, threads)
  options.threading.max_intra_op_parallelism = 1
  # Every parallelism and buffer here is set by the config, so autotuning has nothing to tune, and
  # its model thread delayed the iterator's deletion at the end of training by up to a minute
  # (the demo waited 47 s in RootDataset's destructor for it; docs/training.md).
  options.autotune.enabled = False
  return options


def _int_seed(key):
  """An int64 op seed from a (2,) key (Dataset.shuffle takes one integer)."""
  return tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)


def _kth_offset(record, k, key):
  """The k-th of the record's training offsets in its (per-epoch) random order: over the passes
  k = 0 .. num_train_offsets - 1 every offset comes exactly once."""
  rkey = augment_params.fold_key(key, record["video_index"], record["parity"], record["block"])
  offsets = tf.random.experimental.stateless_shuffle(
      tf.range(tf.cast(record["num_train_offsets"], tf.int32)), rkey)
  return offsets[k]


def _finalize(clip, train: bool):
  """The batch keys and dtypes (module docstring)."""
  out = {
      "image": clip["image"],
      "intrinsics": tf.cast(clip["intrinsics"], tf.float32),
      "not_padding": tf.cast(clip["not_padding"], tf.float32),
      "joints25d": tf.cast(clip["joints25d"], tf.float32),
      "joints3d": tf.cast(clip["joints3d"], tf.float32),
      "hand_valid": tf.cast(clip["hand_valid"], tf.float32),
      "object": tf.cast(clip["object"], tf.int32),
      "action": tf.cast(clip["action"], tf.int32),
      "video_index": tf.cast(clip["video_index"], tf.int32),
      "start_frame": tf.cast(clip["start_frame"], tf.int32),
      "frame_idx": tf.cast(clip["frame_idx"], tf.int32),
  }
  # augment.on_device: the clip's drawn augmentation, applied in the training step.
  out.update({k: v for k, v in clip.items() if k.startswith("aug_")})
  if not train:
    out["video_id"] = clip["video_id"]
    out["valid"] = tf.cast(clip["valid"], tf.float32)
  return out


def _decoder(config, train: bool, aug_key=None, aug_config=None):
  """clip (encoded) -> decoded, augmented (training), finalized clip."""
  num_frames = config.model.num_frames
  height, width = config.dataset.image_size

  def decode(clip):
    clip = dict(clip)
    clip["image"] = tf.ensure_shape(schema.decode_images(clip["image"], height, width),
                                    [num_frames, height, width, 3])
    if train:
      e, b, j = tf.unstack(clip.pop("aug_index"))
      clip = augment_host.augment_clip(clip, augment_params.fold_key(aug_key, e, b, j), aug_config)
    return _finalize(clip, train)

  return decode


def _count_train_clips(files: List[str]) -> int:
  """Training clips in `files` (for resuming with 'files')."""
  counts = tf.data.TFRecordDataset(files).map(schema.parse_num_train_offsets)
  try:
    return int(counts.reduce(np.int64(0), lambda a, b: a + b))
  except schema.READ_ERRORS as e:
    error = e
  raise schema.located_error(error, files)


def _train_dataset(config, files, manifest, index, count, seed, start_step, num_epochs):
  """Training batches of process `index` of `count` (module docstring)."""
  global_batch = config.batch_size
  if global_batch % count:
    raise config_lib.ConfigError(
        f"config.batch_size={global_batch} is not divisible by the number of "
        f"processes ({count})")
  host_batch = global_batch // count
  mode = config.dataset.host_sharding
  if mode == "files":
    if len(files) < count:
      raise config_lib.ConfigError(
          f"config.dataset.host_sharding='files' needs at least one shard per "
          f"process: {len(files)} shards for {count} processes; use "
          f"--config.dataset.host_sharding=batch or prepare more shards")
    records = [sh["records"] for sh in manifest["shards"][index::count]
               if isinstance(sh, dict) and "records" in sh]
    if records and sum(records) < host_batch:  # >= 1 clip per record; else epochs are empty
      raise config_lib.ConfigError(
          f"process {index}'s shards hold {sum(records)} records, fewer than its "
          f"batch ({host_batch}): use --config.dataset.host_sharding=batch")
    files, read_batch, stream, rows = files[index::count], host_batch, index + 1, None
  elif mode == "batch":
    read_batch, stream, rows = global_batch, 0, (index * host_batch, (index + 1) * host_batch)
  else:
    raise config_lib.ConfigError(
        f"config.dataset.host_sharding={mode!r} is not one of ['files', 'batch']")
  base = tf.constant([seed, stream], tf.int64)
  num_frames, window = config.model.num_frames, config.model.window  # At most t offsets a record.
  buffer = int(config.dataset.get("shuffle_buffer", 64))
  cycle = min(len(files), int(config.dataset.get("cycle_length", 64)))
  files_t = tf.constant(files)

  def tag(epoch, b, batch):
    first, last = rows if rows else (0, read_batch)
    if rows:
      batch = {k: v[first:last] for k, v in batch.items()}
    row = tf.range(first, last, dtype=tf.int64)
    batch["aug_index"] = tf.stack([tf.fill([last - first], epoch), tf.fill([last - first], b),
                                   row], axis=1)
    return batch

  def offset_pass(key, k):
    """Pass k of an epoch: every record with more than k offsets gives its k-th clip."""
    pass_key = augment_params.fold_key(key, 1, k)
    order = tf.random.experimental.stateless_shuffle(files_t, pass_key)
    records = tf.data.Dataset.from_tensor_slices(order).interleave(
        tf.data.TFRecordDataset, cycle_length=cycle, block_length=1)
    records = records.map(schema.parse_record).filter(
        lambda r: tf.cast(r["num_train_offsets"], tf.int32) > tf.cast(k, tf.int32))
    records = records.shuffle(buffer, seed=_int_seed(augment_params.fold_key(pass_key, 3)))
    offsets_key = augment_params.fold_key(key, 2)  # The same for every pass of the epoch.
    return records.map(lambda r: schema.cut_clip(r, _kth_offset(r, tf.cast(k, tf.int32),
                                                                offsets_key), num_frames))

  def epoch_batches(epoch):
    key = augment_params.fold_key(base, epoch)
    clips = tf.data.Dataset.range(window).flat_map(lambda k: offset_pass(key, k))
    batches = clips.batch(read_batch, drop_remainder=True).enumerate()
    return batches.map(lambda b, batch: tag(epoch, b, batch))

  if mode == "batch":
    per_epoch = steps_per_epoch(manifest, global_batch)
  else:  # Only a resume needs the length of this process's epoch.
    per_epoch = _count_train_clips(files) // host_batch if start_step else 1
    if per_epoch == 0:
      raise config_lib.ConfigError(
          f"process {index}'s shards hold fewer clips than its batch ({host_batch})")
  first_epoch, skip = divmod(start_step, per_epoch)
  last_epoch = _INT64_MAX if num_epochs is None else first_epoch + num_epochs
  ds = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch_batches).skip(skip)
  decode = _decoder(config, True, augment_params.fold_key(base, 4), augment.from_config(config))
  ds = ds.unbatch().map(decode, num_parallel_calls=config.dataset.num_parallel_calls,
                        deterministic=True)
  return ds.batch(host_batch, drop_remainder=True)


def _eval_dataset(config, files, manifest, index, count):
  """Evaluation batches (offset 0 of every record, in order, padded; module docstring)."""
  global_batch = config.eval_batch_size
  if global_batch % count:
    raise config_lib.ConfigError(
        f"config.eval_batch_size={global_batch} is not divisible by the number of "
        f"processes ({count})")
  host_batch = global_batch // count
  num_clips = int(manifest.get("records", manifest["clips"]["eval"]))
  records = tf.data.TFRecordDataset(files).map(lambda s: (s, 1.0))
  pad = -num_clips % global_batch
  if pad:  # Copies of the first record, valid = 0: every batch is full, no clip is dropped.
    copies = tf.data.TFRecordDataset(files[:1]).take(1).repeat(pad).map(lambda s: (s, 0.0))
    records = records.concatenate(copies)
  records = records.enumerate().filter(
      lambda i, _: (i % global_batch) // host_batch == index).map(lambda i, r: r)
  num_frames = config.model.num_frames
  decode = _decoder(config, False)

  def clip(serialized, valid):
    c = schema.cut_clip(schema.parse_record(serialized), 0, num_frames)
    c["valid"] = valid
    return decode(c)

  ds = records.map(clip, num_parallel_calls=config.dataset.num_parallel_calls, deterministic=True)
  # Not drop_remainder: with a correct manifest every batch is full; a wrong count shows up.
  return ds.batch(host_batch)


def create_dataset(config, split: str, train: bool, *, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, seed: Optional[int] = None,
                   start_step: int = 0, num_epochs: Optional[int] = None) -> tf.data.Dataset:
  """This process's batches of `split` (iterate with .as_numpy_iterator()).

  Training: augmented, shuffled, repeated (num_epochs=None: forever); start_step skips the
  first start_step batches (resume) without decoding them. Evaluation: one pass, in order.
  process_index/count default to JAX's; seed defaults to config.seed.
  """
  index, count = _processes(process_index, process_count)
  manifest = load_manifest(config.dataset.data_dir, split, config)
  files = schema.shard_paths(config.dataset.data_dir, split, manifest)
  if not files:
    raise config_lib.ConfigError(
        f"{schema.manifest_path(config.dataset.data_dir, split)} lists no shards")
  if train:
    seed = config.seed if seed is None else seed
    ds = _train_dataset(config, files, manifest, index, count, seed, start_step, num_epochs)
  else:
    ds = _eval_dataset(config, files, manifest, index, count)
  return ds.prefetch(config.dataset.prefetch).with_options(_options(config))


def _checked(config, split: str, ds: tf.data.Dataset) -> Iterator[Dict[str, np.ndarray]]:
  """ds's numpy batches; a record TF cannot read or decode is a schema.DataError naming the shard
  and the record (found by reading the split again only then: the pipeline is unchanged)."""
  data_dir = config.dataset.data_dir
  manifest = schema.load_manifest(data_dir, split)
  return schema.Checked(ds.as_numpy_iterator(), schema.shard_paths(data_dir, split, manifest),
                        tuple(config.dataset.image_size), manifest["shards"])


def train_batches(config, start_step: int = 0, **kwargs) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy training batches of this process, from global step start_step + 1 onwards."""
  return _checked(config, "train",
                  create_dataset(config, "train", True, start_step=start_step, **kwargs))


def eval_batches(config, split: str, **kwargs) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy evaluation batches of this process (create_dataset(train=False)), checked the same
  way as train_batches."""
  return _checked(config, split, create_dataset(config, split, False, **kwargs))
