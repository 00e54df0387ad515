"""Writes one split of `Video`s as TFRecord shards of storage windows, then a manifest.

Files in output_dir, per split:
  {split}-{i:05d}-of-{n:05d}.tfrecord  the shards. A shard holds whole videos, contiguous in split
      order, so reading the shards in order gives the reference's clip order. Written as
      `<name>.incomplete` and renamed when complete: a file under its final name is complete.
  {split}.plan.json  written (atomically) before any shard: the configuration and which videos go
      to which shard. A rerun (after an interruption, or after a shard or the manifest was deleted)
      follows the plan, so shard boundaries never depend on a new byte estimate.
  {split}.manifest.json  written last and atomically: its presence means the split is complete.
The shard names, the records and the manifest's keys are data_pipeline/schema.py's, which every
reader uses; this module only decides what goes where.

Shard sizing: a first pass over the videos' annotations (no images) gives each video's stored frame
count; a handful of frames (middle frame of up to 8 evenly spaced videos) is encoded to estimate
bytes per frame; videos are then packed in order into shards of about `shard_bytes`. Only the
videos' annotations are held in memory, never images; each worker keeps at most ~s*(T+t) encoded
frames of one video.

Workers: `num_workers` spawned processes each write whole shards (one task = one shard), so the
bytes of a shard never depend on the number of workers. A task carries its `Video`s, so
`Video.load_image` must pickle (a module-level function, functools.partial or callable object); if
it does not, the shards are written in this process instead (logged).

output_dir may be a URL (gs://bucket/fpha): shards are written and renamed by TensorFlow's file
system, the plan and manifest through htt_jax/storage.py; on ram:// (TensorFlow's in-memory file
system, one per process, used by the tests) shards are written in this process.
"""

import concurrent.futures
import dataclasses
import io
import logging
import multiprocessing
import os
import pickle
import queue as queue_lib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
import tqdm

from data_pipeline import schema
from data_pipeline import windowing
from data_pipeline.video import Video
from htt_jax import storage

PLAN_SUFFIX = ".plan.json"
_SAMPLE_VIDEOS = 8
# Pillow hands the quality to libjpeg, which clamps anything outside 1..100 without a word (500
# encodes as 100, 0 as 1) while the manifest would record the value given: refused instead.
JPEG_QUALITY_RANGE = (1, 100)


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
  """(H, W, 3) uint8 -> JPEG or PNG bytes (PIL: no TensorFlow needed to encode)."""
  buffer = io.BytesIO()
  if image_format == "jpeg":
    Image.fromarray(image).save(buffer, "JPEG", quality=jpeg_quality)
  elif image_format == "png":
    Image.fromarray(image).save(buffer, "PNG")
  else:
    raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
  return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class RecordOptions:
  num_frames: int
  window: int
  spacing: int
  image_size: Tuple[int, int]
  image_format: str
  jpeg_quality: Optional[int]

  def __post_init__(self):
    low, high = JPEG_QUALITY_RANGE
    if self.image_format == "jpeg" and not (
        isinstance(self.jpeg_quality, (int, np.integer)) and low <= self.jpeg_quality <= high):
      raise ValueError(f"jpeg_quality={self.jpeg_quality!r} must be an integer in {low}..{high}")


def _load_frame(video: Video, position: int, image_size) -> np.ndarray:
  image = np.asarray(video.load_image(position))
  if image.shape != (*image_size, 3) or image.dtype != np.uint8:
    raise ValueError(f"video {video.video_id!r}, frame {position} (raw {video.frame_idx[position]}):"
                     f" image is {image.dtype} {image.shape}, expected uint8 {(*image_size, 3)}")
  return image


def video_records(video: Video, video_index: int, opts: RecordOptions, progress):
  """Serialized records of one video's windows, each frame loaded and encoded once."""
  windows = windowing.storage_windows(len(video), opts.num_frames, opts.window, opts.spacing)
  cache: Dict[int, bytes] = {}
  next_position = 0
  for win in windows:
    # Windows are block-major, so frames before this block are never needed again.
    low = opts.spacing * opts.num_frames * win.block
    for position in [q for q in cache if q < low]:
      del cache[position]
    loaded = 0
    last = int(win.positions[-1])
    # Load in ascending order (video decoders like that); the other parity is cached for later.
    while next_position <= last:
      image = _load_frame(video, next_position, opts.image_size)
      cache[next_position] = encode_image(image, opts.image_format, opts.jpeg_quality)
      next_position += 1
      loaded += 1
    pos = win.positions
    yield schema.make_example({
        "video_id": video.video_id, "subject": video.subject, "video_index": video_index,
        "parity": win.parity, "block": win.block, "num_train_offsets": win.num_train_offsets,
        "frame_idx": np.asarray(video.frame_idx)[pos], "images": [cache[int(q)] for q in pos],
        "joints3d": video.joints3d[pos], "joints2d": video.joints2d[pos],
        "intrinsics": video.intrinsics, "hand_valid": video.hand_valid[pos],
        "object": video.object[pos], "action": video.action, "image_size": opts.image_size})
    progress(loaded)


def _write_shard(path: str, videos: Sequence[Tuple[int, Video]], opts: RecordOptions,
                 progress=None) -> Dict[str, int]:
  """Writes one shard (temporary name, then rename). Runs in a worker or in this process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  progress = progress or _report_progress
  temporary = path + ".incomplete"
  records = stored = 0
  with tf.io.TFRecordWriter(temporary) as writer:
    for video_index, video in videos:
      for record in video_records(video, video_index, opts, progress):
        writer.write(record)
        records += 1
      stored += windowing.stored_frames(len(video), opts.num_frames, opts.window, opts.spacing)
  # TensorFlow wrote it, so TensorFlow renames it (on gs:// a copy, then a delete).
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return {"records": records, "stored_frames": stored}


_PROGRESS_QUEUE = None


def _init_worker(progress_queue) -> None:
  global _PROGRESS_QUEUE
  _PROGRESS_QUEUE = progress_queue


def _report_progress(frames: int) -> None:
  if _PROGRESS_QUEUE is not None and frames:
    _PROGRESS_QUEUE.put(frames)


def _write_json(path: str, value) -> None:
  storage.write_json(path, value, indent=1, sort_keys=False)


def check_videos(videos: List[Video], image_size) -> Tuple[Tuple[int, int], int, int]:
  """Validates every video; returns (image_size, num_joints, num_hands), equal for all videos."""
  seen = set()
  first = videos[0]
  image_size = tuple(int(x) for x in (image_size or first.image_size))
  shape = (first.joints3d.shape[1], first.hand_valid.shape[1])
  for video in videos:
    video.validate()
    if video.video_id in seen:
      raise ValueError(f"video id {video.video_id!r} appears twice in the split")
    seen.add(video.video_id)
    if tuple(video.image_size) != image_size:
      raise ValueError(f"video {video.video_id!r} has image_size {tuple(video.image_size)}, "
                       f"expected {image_size}")
    if (video.joints3d.shape[1], video.hand_valid.shape[1]) != shape:
      raise ValueError(f"video {video.video_id!r} has {video.joints3d.shape[1]} joints and "
                       f"{video.hand_valid.shape[1]} hands, the first video {shape}")
  return image_size, int(shape[0]), int(shape[1])


def _check_existing(output_dir: str, split: str, config: Mapping,
                    video_ids: List[str]) -> Tuple[Optional[List[List[str]]], Optional[dict]]:
  """Refuses output of another configuration; returns this split's (plan shards, manifest)."""
  names = sorted(storage.listdir(output_dir))
  for name in names:
    if not name.endswith((schema.MANIFEST_SUFFIX, PLAN_SUFFIX)):
      continue
    schema.check_record_config(os.path.join(output_dir, name), config)
  plan = manifest = None
  path = schema.manifest_path(output_dir, split)
  if storage.exists(path):
    manifest = schema.load_manifest(output_dir, split)
    counts = [s["videos"] for s in manifest["shards"]]
    ids = manifest["videos"]["ids"]
    plan = [ids[sum(counts[:i]):sum(counts[:i + 1])] for i in range(len(counts))]
  elif storage.exists(os.path.join(output_dir, split + PLAN_SUFFIX)):
    path = os.path.join(output_dir, split + PLAN_SUFFIX)
    plan = schema.read_json(path).get("shards")
    if not isinstance(plan, list):
      raise schema.DataError(f"{path} has no 'shards' list: delete it to convert the split again")
  if plan is not None and [v for shard in plan for v in shard] != video_ids:
    raise ValueError(f"{path} lists other videos than this run's source yields (the raw data "
                     f"changed?): use another output_dir, or delete the split's files")
  expected = {schema.shard_name(split, i, len(plan)) for i in range(len(plan))} if plan else set()
  for name in names:
    if name.startswith(split + "-") and name.endswith(".tfrecord") and name not in expected:
      raise ValueError(f"{os.path.join(output_dir, name)} is a shard that no manifest or plan of "
                       f"this run describes (another conversion?): delete it or use another "
                       f"output_dir")
  return plan, manifest


def _make_plan(videos: List[Video], opts: RecordOptions, shard_bytes: float,
               min_shards: int) -> List[List[str]]:
  """Packs videos, in order, into shards of about shard_bytes (estimated, see module doc)."""
  picks = sorted(set(np.linspace(0, len(videos) - 1, min(_SAMPLE_VIDEOS, len(videos)))
                     .round().astype(int).tolist()))
  frame_bytes = np.mean([
      len(encode_image(_load_frame(videos[i], len(videos[i]) // 2, opts.image_size),
                       opts.image_format, opts.jpeg_quality)) for i in picks])
  # Annotations: float32 joints (3D + 2D), int64 frame number, object and hand flags, framing.
  joints, hands = videos[0].joints3d.shape[1], videos[0].hand_valid.shape[1]
  frame_bytes += 20 * joints + 8 * hands + 40
  sizes = [frame_bytes * windowing.stored_frames(len(v), opts.num_frames, opts.window,
                                                 opts.spacing) for v in videos]
  target = min(shard_bytes, sum(sizes) / max(1, min_shards))
  shards, size = [[]], 0.0
  for video, video_bytes in zip(videos, sizes):
    if shards[-1] and size + video_bytes > target:
      shards.append([])
      size = 0.0
    shards[-1].append(video.video_id)
    size += video_bytes
  return shards


def _run_shards(tasks: List[Tuple[int, str, list]], opts: RecordOptions, num_workers: int,
                total_frames: int, progress: bool, split: str) -> Dict[int, Dict[str, int]]:
  """Writes the shards of `tasks` with worker processes (or here); returns stats per shard."""
  bar = tqdm.tqdm(total=total_frames, unit="frame", desc=f"{split} frames", disable=not progress,
                  smoothing=0.1)
  results = {}
  workers = min(num_workers, len(tasks))
  if tasks and tasks[0][1].startswith("ram://"):
    workers = 1  # TensorFlow's in-memory file system is per process: a worker's shard would vanish
  if workers > 1:
    try:
      pickle.dumps(tasks[0][2][0][1].load_image)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Video.load_image does not pickle (%s): writing %d shards in this process",
                      e, len(tasks))
      workers = 1
  if workers <= 1:
    try:
      for index, path, videos in tasks:
        results[index] = _write_shard(path, videos, opts, bar.update)
    finally:  # closed before an error is printed, so the error starts its own line
      bar.close()
    return results
  context = multiprocessing.get_context("spawn")
  progress_queue = context.Queue()
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(progress_queue,))
  try:
    futures = {pool.submit(_write_shard, path, videos, opts): index
               for index, path, videos in tasks}
    pending = set(futures)
    while pending:
      done, pending = concurrent.futures.wait(pending, timeout=0.2,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
      try:
        while True:
          bar.update(progress_queue.get_nowait())
      except queue_lib.Empty:
        pass
      for future in done:
        results[futures[future]] = future.result()  # re-raises a worker's error here
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
  return results


def prepare_split(videos: Iterable[Video], output_dir: str, split: str, *, num_frames: int = 128,
                  window: int = 16, spacing: int = 2, image_format: str = "jpeg",
                  jpeg_quality: int = 95, shard_bytes: float = 150e6, min_shards: int = 1,
                  num_workers: int = 1, vocabulary=None, dataset_name: str = "",
                  image_size: Optional[Sequence[int]] = None,
                  progress: bool = True) -> Dict[str, Any]:
  """Converts one split to TFRecord shards + manifest in output_dir; returns the manifest.

  A rerun with the same configuration skips finished shards and resumes an interrupted run; output
  of another configuration is refused (naming the file) before anything is written, and so is a
  split without videos (a manifest never describes an empty split) or a bad argument.
  """
  videos = list(videos)
  windowing.storage_windows(0, num_frames, window, spacing)  # validates T, t, spacing
  if image_format not in ("jpeg", "png"):
    raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
  if not shard_bytes > 0 or not min_shards >= 1 or not num_workers >= 1:
    raise ValueError(f"need shard_bytes > 0, min_shards >= 1 and num_workers >= 1, got "
                     f"{shard_bytes}, {min_shards}, {num_workers}")
  if not videos:
    raise ValueError(f"split {split!r} has no videos: nothing to write")
  image_size, num_joints, num_hands = check_videos(videos, image_size)
  opts = RecordOptions(num_frames, window, spacing, image_size, image_format,
                  jpeg_quality if image_format == "jpeg" else None)
  config = schema.record_config(dataset_name, num_frames, window, spacing, image_size,
                                image_format, jpeg_quality)
  video_ids = [v.video_id for v in videos]
  plan, manifest = _check_existing(output_dir, split, config, video_ids)
  names = [schema.shard_name(split, i, len(plan or [])) for i in range(len(plan or []))]
  if manifest is not None and all(storage.exists(os.path.join(output_dir, n)) for n in names):
    logging.info("%s: already complete", schema.manifest_path(output_dir, split))
    return manifest
  storage.makedirs(output_dir)
  plan_path = os.path.join(output_dir, split + PLAN_SUFFIX)
  if plan is None:
    plan = _make_plan(videos, opts, shard_bytes, min_shards)
    names = [schema.shard_name(split, i, len(plan)) for i in range(len(plan))]
  # The plan goes first and a stale manifest away, so an interruption never leaves a manifest over
  # an incomplete split, and the next run finds the same assignment.
  if not storage.exists(plan_path):
    _write_json(plan_path, dict(config, split=split, shards=plan))
  if manifest is not None:
    storage.remove(schema.manifest_path(output_dir, split))
  by_id = {v.video_id: (i, v) for i, v in enumerate(videos)}
  tasks = [(i, os.path.join(output_dir, name), [by_id[v] for v in shard])
           for i, (name, shard) in enumerate(zip(names, plan))
           if not storage.exists(os.path.join(output_dir, name))]
  logging.info("%s: %d of %d shards to write", split, len(tasks), len(plan))
  total_frames = sum(len(v) for _, _, shard in tasks for _, v in shard)
  written = _run_shards(tasks, opts, num_workers, total_frames, progress, split)

  shards, clips = [], [0, 0]
  for i, (name, shard) in enumerate(zip(names, plan)):
    lengths = [len(by_id[v][1]) for v in shard]
    records = sum(len(windowing.storage_windows(n, num_frames, window, spacing)) for n in lengths)
    stored = sum(windowing.stored_frames(n, num_frames, window, spacing) for n in lengths)
    if i in written and written[i] != {"records": records, "stored_frames": stored}:
      raise RuntimeError(f"shard {name}: wrote {written[i]}, expected {records} records, "
                         f"{stored} frames")
    for n in lengths:
      train, evaluation = windowing.count_clips(n, num_frames, window, spacing)
      clips[0] += train
      clips[1] += evaluation
    shards.append({"file": name, "records": records, "videos": len(shard),
                   "stored_frames": stored,
                   "bytes": storage.size(os.path.join(output_dir, name))})
  manifest = schema.make_manifest(
      config, split, num_joints=num_joints, num_hands=num_hands, vocabulary=vocabulary,
      video_ids=video_ids, clips=clips, raw_frames=int(sum(len(v) for v in videos)),
      shards=shards)
  schema.write_manifest(output_dir, split, manifest)
  return manifest
