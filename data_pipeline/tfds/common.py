"""What the TFDS builders share: config, features, example generation (local or Beam), manifests.

One TFDS example = one storage window (data_pipeline/schema.py): up to T + t - 1 sub-sampled
frames of one video, every training clip of its block cut at read time. The examples are made by
the writer's own code (`writer.video_records` -> `schema.make_example`) and then handed to TFDS
field by field, so they cannot drift from what `scripts/prepare_data.py` writes.

Why a FeaturesDict of plain tensors and not the records as opaque bytes: TFDS serializes each
feature as one entry of a tf.train.Example, named as the feature, as a flat int64/float/bytes list.
With the feature names, dtypes and value orders of `schema.FEATURES` the TFDS record is the same
tf.train.Example (equal as a protocol buffer) as ours, so our readers (`schema.parse_record`,
`read_clips`, `htt_jax.input_pipeline`) read the TFDS shards unchanged, while `tfds.load` users
get decoded images and shaped joints. Only the byte order of the proto's map entries may differ
(TFDS does not ask protobuf for deterministic serialization); no reader depends on it.

Order: the readers need a video's windows contiguous and block-major (evaluation clips 0, 1, 256,
257, ... and the grouping in read_clips), so shuffling is disabled and example keys are the
record's position in the split, scaled over TFDS's 128-bit key space: the writer sorts by key,
and spread keys land in its 1000 sort buckets in order instead of all in bucket 0 (which it would
sort in memory: the whole split once it passes 1 GB).

Manifests: after the splits are written, `<split>.manifest.json` (schema.make_manifest's keys,
as the writer's) is added to the dataset folder, listing the TFDS shard files, so
`read_clips(folder, split)` and training with `config.dataset.data_dir=folder` work as on
prepare_data.py's output. TFDS may split a video over two shards; the readers do not mind.

Beam: when generation is given a Beam runner or pipeline options (`tfds build
--beam_pipeline_options=...`), each video becomes a Beam element whose windows are encoded on a
worker; otherwise examples are generated in this process. apache_beam is imported only then.
"""

import abc
import collections
import dataclasses
import inspect
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import schema
from data_pipeline import windowing
from data_pipeline import writer
from data_pipeline.video import Video
from htt_jax import storage

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": f"Storage windows of data_pipeline/schema.py version "
                          f"{schema.SCHEMA_VERSION}."}
_KEY_SPACE = 2 ** 128  # TFDS's shuffler packs keys into 128 bits.
# The writer's own pieces: a record, its settings and the video checks have one implementation,
# the writer's.
_RecordOptions = writer.RecordOptions
_video_records = writer.video_records
_check_videos = writer.check_videos


@dataclasses.dataclass(eq=False)
class WindowConfig(tfds.core.BuilderConfig):
  """How clips are windowed and frames stored (scripts/prepare_data.py's flags of the same names).

  `tfds build --config='{"name": "t32", "num_frames": 32, "image_size": [96, 160]}'` makes a
  config that is not in BUILDER_CONFIGS.
  """
  num_frames: int = 128  # T
  window: int = 16  # t
  spacing: int = 2
  image_size: Tuple[int, int] = (270, 480)  # stored (H, W); 2D joints and intrinsics follow
  image_format: str = "jpeg"
  jpeg_quality: int = 95

  def __post_init__(self):
    # JSON configs from the command line give lists; the features need a fixed (H, W).
    self.image_size = tuple(int(x) for x in self.image_size)
    windowing.storage_windows(0, self.num_frames, self.window, self.spacing)  # validates T, t, s
    if len(self.image_size) != 2 or min(self.image_size) < 1:
      raise ValueError(f"config {self.name!r}: image_size must be (H, W), got {self.image_size}")
    if self.image_format not in ("jpeg", "png"):
      raise ValueError(f"config {self.name!r}: image_format must be 'jpeg' or 'png', got "
                       f"{self.image_format!r}")
    if self.description is None:
      quality = f" quality {self.jpeg_quality}" if self.image_format == "jpeg" else ""
      self.description = (f"T={self.num_frames}, t={self.window}, spacing {self.spacing}, "
                          f"{self.image_size[0]}x{self.image_size[1]} (HxW) "
                          f"{self.image_format}{quality}")


def features(config: WindowConfig, num_joints: int, num_hands: int) -> tfds.features.FeaturesDict:
  """The record fields of schema.FEATURES as TFDS features (same names, dtypes, value order)."""
  height, width = config.image_size
  scalar = lambda doc: tfds.features.Tensor(shape=(), dtype=tf.int64, doc=doc)
  text = lambda doc: tfds.features.Tensor(shape=(), dtype=tf.string, doc=doc)
  frames = lambda shape, dtype, doc: tfds.features.Tensor(shape=(None, *shape), dtype=dtype,
                                                          doc=doc)
  result = tfds.features.FeaturesDict({
      "video_id": text("unique video id; clips are voted per video"),
      "subject": text("the subject (split unit)"),
      "video_index": scalar("position of the video in its split"),
      "parity": scalar("p: the window holds raw positions p, p + spacing, ..."),
      "block": scalar("k: the window starts at sub-sampled frame T*k"),
      "start_frame": scalar("raw frame number of the window's first frame"),
      "num_train_offsets": scalar("offsets m < this start a training clip (frames m..m+T-1)"),
      "frame_idx": frames((), tf.int64, "raw frame numbers"),
      "image": tfds.features.Sequence(
          tfds.features.Image(shape=(height, width, 3), encoding_format=config.image_format),
          doc="frames at the stored size"),
      "joints3d": frames((num_joints, 3), tf.float32, "camera space, metres"),
      "joints2d": frames((num_joints, 2), tf.float32, "pixels of the stored image"),
      "intrinsics": tfds.features.Tensor(shape=(3, 3), dtype=tf.float32,
                                         doc="camera of the stored image"),
      "hand_valid": frames((num_hands,), tf.bool, "annotation present (H2O flag)"),
      "object": frames((), tf.int64, "object index per frame, -1 unknown"),
      "action": scalar("action index, -1 where the split has no labels"),
      "num_joints": scalar("J"),
      "num_hands": scalar("K"),
      "height": scalar("stored image height"),
      "width": scalar("stored image width"),
  })
  if set(result.keys()) != set(schema.FEATURES):  # the contract with our readers
    raise AssertionError(f"TFDS features {sorted(result.keys())} differ from schema.FEATURES "
                         f"{sorted(schema.FEATURES)}")
  return result


def record_to_example(serialized: bytes) -> Dict[str, Any]:
  """One schema.make_example record -> the dict TFDS encodes (arrays shaped, images encoded)."""
  values = schema.record_arrays(serialized)
  values["hand_valid"] = values["hand_valid"].astype(bool)  # the feature is tf.bool
  return values


def _options(config: WindowConfig):
  return _RecordOptions(config.num_frames, config.window, config.spacing,
                        tuple(config.image_size), config.image_format,
                        config.jpeg_quality if config.image_format == "jpeg" else None)


def _video_examples(item, options, spread: int) -> Iterator[Tuple[int, Dict[str, Any]]]:
  """(key, example) of every window of one video; module level so that Beam can pickle it."""
  video_index, first_record, video = item
  records = _video_records(video, video_index, options, lambda frames: None)
  for i, serialized in enumerate(records):
    yield (first_record + i) * spread, record_to_example(serialized)


@dataclasses.dataclass
class _SplitPlan:
  videos: List[Video]
  windows: List[Tuple[int, windowing.Window]]  # (video index, window), in record order


class WindowedVideoBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the dataset builders: subclasses say where videos come from (`_open_source`)."""

  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  SPLIT_NAMES: Tuple[str, ...] = ()
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""
  _use_beam = False  # set per build by _download_and_prepare

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds a builder's file through `importlib_resources`, a package it no longer
    # installs on Python >= 3.9 (ModuleNotFoundError for any builder outside tensorflow_datasets);
    # this is its own fallback for the same answer.
    return epath.Path(inspect.getfile(cls))

  @abc.abstractmethod
  def _open_source(self, dl_manager) -> Tuple[Any, Callable[[str], Iterable[Video]]]:
    """(vocabulary, split -> Videos at the config's image size); errors name the bad file."""

  @abc.abstractmethod
  def _joints_and_hands(self) -> Tuple[int, int]:
    """(J, K) of every video (the features' fixed shapes)."""

  def _info(self) -> tfds.core.DatasetInfo:
    num_joints, num_hands = self._joints_and_hands()
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=features(self.builder_config, num_joints, num_hands),
        homepage=self.HOMEPAGE or None, citation=self.CITATION or None,
        disable_shuffling=True,  # the readers need the reference's order (module doc)
        metadata=tfds.core.MetadataDict())

  def _raw_dir(self, dl_manager, marker: str) -> str:
    """The raw folder: the manual dir itself or its `<name>/` subfolder, whichever has `marker`."""
    manual = dl_manager.manual_dir  # TFDS's own error, with our instructions, if missing/empty
    for folder in (manual, manual / self.name):
      if (folder / marker).exists():
        return os.fspath(folder)
    raise FileNotFoundError(
        f"{manual / marker} not found (nor {manual / self.name / marker}): the manual dir must "
        f"be the raw {self.name} folder.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _split_generators(self, dl_manager):
    config = self.builder_config
    vocabulary, videos_of = self._open_source(dl_manager)
    num_joints, num_hands = self._joints_and_hands()
    self._plans: Dict[str, _SplitPlan] = {}
    generators = {}
    # Every split's annotations are read and checked before any image is encoded (prepare_data.py
    # checks every split's list up to its first video first, then reads each split whole before
    # encoding it): bad data fails in seconds, naming the file.
    for split in self.SPLIT_NAMES:
      videos = list(videos_of(split))
      if not videos:
        raise ValueError(f"{self.name}: split {split!r} has no videos")
      _, joints, hands = _check_videos(videos, config.image_size)
      if (joints, hands) != (num_joints, num_hands):
        raise ValueError(f"{self.name} split {split!r}: videos have {joints} joints and {hands} "
                         f"hands, the features expect {num_joints} and {num_hands}")
      windows = [(i, w) for i, video in enumerate(videos) for w in windowing.storage_windows(
          len(video), config.num_frames, config.window, config.spacing)]
      self._plans[split] = _SplitPlan(videos, windows)
      generators[split] = self._generate_examples(split)
    self.info.metadata.update(
        format_version=schema.SCHEMA_VERSION, num_frames=config.num_frames,
        window=config.window, spacing=config.spacing, image_size=list(config.image_size),
        vocabulary=schema.vocabulary_json(vocabulary))
    return generators

  def _generate_examples(self, split: str):
    """The split's windows as (key, example): a generator, or a Beam PTransform (module doc)."""
    plan = self._plans[split]
    spread = _KEY_SPACE // max(1, len(plan.windows))
    counts = collections.Counter(i for i, _ in plan.windows)
    items, first = [], 0
    for index, video in enumerate(plan.videos):  # (video index, its first record, video)
      items.append((index, first, video))
      first += counts[index]
    options = _options(self.builder_config)
    if self._use_beam:
      import apache_beam as beam  # pylint: disable=g-import-not-at-top  (optional dependency)
      return (f"{split} videos" >> beam.Create(items)
              | f"{split} windows" >> beam.FlatMap(_video_examples, options, spread))
    return (example for item in items for example in _video_examples(item, options, spread))

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    if self._use_beam:
      try:
        import apache_beam  # pylint: disable=g-import-not-at-top,unused-import
      except ImportError:
        raise ImportError("Beam generation was requested but apache_beam is not installed "
                          "(pip install -e '.[beam]'; docs/data.md, 'TFDS builders')") from None
      if download_config.nondeterministic_order:
        # With Beam that writer ignores keys; the readers need the reference's order.
        raise ValueError(f"{self.name}: --nondeterministic_order would lose the order of the "
                         f"windows that the readers rely on; build without it")
    super()._download_and_prepare(dl_manager, download_config)
    if download_config.max_examples_per_split == 0:  # TFDS wrote no split
      return
    for split in self._plans:
      self._write_manifest(split)

  def _write_manifest(self, split: str) -> None:
    """`<split>.manifest.json` (schema.make_manifest's keys) for the TFDS shards of `split`."""
    config, plan = self.builder_config, self._plans[split]
    info = self.info.splits[split]
    # max_examples_per_split keeps a prefix of the (ordered) windows; count what was written.
    windows = plan.windows[:info.num_examples]
    used = sorted({i for i, _ in windows})
    folder = os.fspath(self.data_dir)
    shards, start = [], 0
    for name, length in zip(info.filenames, info.shard_lengths):
      part = windows[start:start + length]
      shards.append({"file": name, "records": length, "videos": len({i for i, _ in part}),
                     "stored_frames": sum(len(w.positions) for _, w in part),
                     "bytes": storage.size(os.path.join(folder, name))})
      start += length
    num_joints, num_hands = self._joints_and_hands()
    format_config = schema.record_config(
        self.name, config.num_frames, config.window, config.spacing, config.image_size,
        config.image_format, config.jpeg_quality)
    manifest = schema.make_manifest(
        format_config, split, num_joints=num_joints, num_hands=num_hands,
        vocabulary=self.info.metadata["vocabulary"],
        video_ids=[plan.videos[i].video_id for i in used],
        clips=(sum(w.num_train_offsets for _, w in windows), len(windows)),
        raw_frames=sum(len(plan.videos[i]) for i in used), shards=shards,
        tfds={"name": self.info.full_name})
    schema.write_manifest(folder, split, manifest)
