"""htt_jax/augment against Pillow (what the reference calls), and input_pipeline.py on tiny shards.

The shards are written here with schema.make_example from windows cut by the reference's rules
(reference.md §3.4-3.5, re-derived in this file, not via data_pipeline.windowing). Pixels
encode the video and raw frame number; joints2d is the projection of joints3d with the
record's intrinsics.
"""

import dataclasses
import functools
import io
import json

import jax
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
import pytest
import tensorflow as tf

from data_pipeline import schema
from htt_jax import augment
from htt_jax import input_pipeline
from htt_jax.augment import host as augment_host
from htt_jax.augment import params as augment_params
from tests.conftest import load_config

T, WIN, SPACING = 8, 4, 2
H, W = 72, 128
JOINTS, HANDS = 21, 1
LENGTHS = (40, 21, 9, 30)  # One video per shard.
K = np.array([[100.0, 0, 64], [0, 100.0, 36], [0, 0, 1]], np.float32)
NO_COLOUR = augment.AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, blur_radius=0)


def frame_image(video, raw, size=(H, W)):
  y, x = np.mgrid[: size[0], : size[1]]
  channels = [(2 * x + 3 * y + 11 * raw + 50 * video + 80 * c) % 256 for c in range(3)]
  return np.stack(channels, -1).astype(np.uint8)


def textured_image(video, raw, size):
  """Camera-like content (smooth shading plus sensor-like noise): JPEGs of a realistic size."""
  y, x = np.mgrid[: size[0], : size[1]]
  image = np.stack([120 + 80 * np.sin(x / 40 + raw / 10) + 30 * np.cos(y / 25),
                    100 + 60 * np.cos(x / 70 - y / 50 + video),
                    140 + 50 * np.sin((x + y) / 35 + raw / 20)], -1)
  image += np.random.default_rng(raw).normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def frame_joints(video, raw):
  j = np.arange(JOINTS)
  xyz = np.stack([-0.1 + 0.01 * j + 0.001 * raw, -0.05 + 0.004 * j + 0.01 * video,
                  0.4 + 0.005 * j + 1e-3 * raw], -1)
  uvw = xyz @ K.T
  return xyz.astype(np.float32), (uvw[:, :2] / uvw[:, 2:]).astype(np.float32)


def encode(image, fmt):
  Image.fromarray(image).save(buffer := io.BytesIO(), fmt)
  return buffer.getvalue()


def video_records(video, length, num_frames, window, size, fmt, image_fn):
  """Storage windows (block-major, then parity) of a video, as make_example records."""
  sub = [list(range(p, length, SPACING)) for p in range(SPACING)]
  records, block = [], 0
  while any(len(s) > num_frames * block for s in sub):
    for parity, positions in enumerate(sub):
      left = len(positions) - num_frames * block
      if left <= 0:
        continue
      frames = positions[num_frames * block: num_frames * block + num_frames + window - 1]
      joints3d, joints2d = (np.stack(a) for a in zip(*[frame_joints(video, f) for f in frames]))
      records.append(dict(
          video_id=f"video_{video}", video_index=video, parity=parity, block=block,
          frame_idx=np.array(frames), num_train_offsets=min(window, left),
          images=[encode(image_fn(video, f, size), fmt) for f in frames],
          joints3d=joints3d, joints2d=joints2d,
          intrinsics=K, hand_valid=np.ones((len(frames), HANDS), np.int64),
          object=np.array(frames) % 5, action=video, image_size=size))
    block += 1
  return records


def reference_starts(length, num_frames=T, window=WIN, train=True):
  rule = window * SPACING if train else SPACING
  return [q for q in range(length) if q % (num_frames * SPACING) < rule]


def write_split(directory, lengths=LENGTHS, num_frames=T, window=WIN, size=(H, W), fmt="PNG",
                image_fn=frame_image):
  names, num_records = [], 0
  for video, length in enumerate(lengths):
    names.append(f"train-{video:05d}-of-{len(lengths):05d}.tfrecord")
    with tf.io.TFRecordWriter(str(directory / names[-1])) as f:
      for record in video_records(video, length, num_frames, window, size, fmt, image_fn):
        f.write(schema.make_example(record))
        num_records += 1
  manifest = dict(
      format_version=schema.SCHEMA_VERSION, image_size=list(size), num_frames=num_frames,
      window=window, spacing=SPACING, num_joints=JOINTS, num_hands=HANDS, shards=names,
      records=num_records,
      clips={"train": sum(len(reference_starts(n, num_frames, window)) for n in lengths),
             "eval": sum(len(reference_starts(n, num_frames, window, False)) for n in lengths)})
  (directory / "train.manifest.json").write_text(json.dumps(manifest))
  return manifest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("shards")
  write_split(directory)
  return directory


def make_config(data_dir, **overrides):
  config = load_config("smoke")
  config.model.num_frames, config.model.window = T, WIN
  config.dataset.data_dir = str(data_dir)
  config.dataset.image_size = (H, W)
  config.dataset.num_parallel_calls = 2
  config.dataset.prefetch = 1
  config.dataset.shuffle_buffer = 16
  config.batch_size, config.eval_batch_size = 4, 4
  for key, value in overrides.items():
    *path, last = key.split(".")
    functools.reduce(lambda node, part: node[part], path, config)[last] = value
  return config


def take(config, n, **kwargs):
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  ds = input_pipeline.create_dataset(config, "train", True, **kwargs)
  return list(ds.take(n).as_numpy_iterator())


# ------------------------------------------------------------------------------------------------
# Augmentation against Pillow.

def rand_image(seed, size=(30, 44)):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[: size[0], : size[1]]
  smooth = np.stack([4 * x + 3 * y, 2 * x + 7 * y + 60, 250 - 5 * x], -1)
  image = np.where(rng.random(size)[..., None] < 0.5, smooth, rng.integers(0, 256, (*size, 3)))
  return np.clip(image, 0, 255).astype(np.uint8)


def pil_hue(image, factor):
  """torchfn.adjust_hue with the shift of reference.md §6.16: trunc(h * 255) mod 256, wrapped."""
  h, s, v = image.convert("HSV").split()
  shifted = (np.asarray(h).astype(np.int64) + int(np.trunc(factor * 255))) % 256
  return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


PIL_OPS = {augment.BRIGHTNESS: lambda im, f: ImageEnhance.Brightness(im).enhance(f),
           augment.SATURATION: lambda im, f: ImageEnhance.Color(im).enhance(f),
           augment.CONTRAST: lambda im, f: ImageEnhance.Contrast(im).enhance(f),
           augment.HUE: pil_hue}
PARAM = {augment.BRIGHTNESS: "brightness", augment.SATURATION: "saturation",
         augment.CONTRAST: "contrast", augment.HUE: "hue"}


@pytest.mark.parametrize("factor", [0.5, 0.73, 1.0, 1.21, 1.5])
def test_enhance_ops_match_pil(factor):
  image = rand_image(int(factor * 100))
  for op in (augment.BRIGHTNESS, augment.SATURATION, augment.CONTRAST):
    fn = getattr(augment_host, "adjust_" + PARAM[op])
    want = np.asarray(PIL_OPS[op](Image.fromarray(image), factor)).astype(int)
    got = fn(tf.constant(image[None]), factor).numpy()[0]
    assert np.abs(got - want).max() <= 1, (op, factor)


@pytest.mark.parametrize("factor", [-0.15, -0.061, 0.0, 0.004, 0.099, 0.15])
def test_hue_matches_pil_with_wraparound(factor):
  image = rand_image(7)
  image[:4] = [[250, 2, 10]]  # H = 254: a positive shift wraps past 255.
  image[4:8] = [[255, 10, 0]]  # H = 1: a negative shift wraps below 0.
  want = np.asarray(pil_hue(Image.fromarray(image), factor)).astype(int)
  got = augment_host.adjust_hue(tf.constant(image[None]), factor).numpy()[0]
  assert np.abs(got - want).max() <= 1
  if factor != 0:
    hue_out = np.asarray(Image.fromarray(got.astype(np.uint8)).convert("HSV"))[..., 0]
    shift = int(np.trunc(factor * 255)) % 256
    for rows, h in ((slice(0, 4), 254), (slice(4, 8), 1)):  # wrapped, not clipped at 0 or 255
      assert abs(int(np.median(hue_out[rows])) - (h + shift) % 256) <= 2


def test_hue_shift_is_truncated_mod_256():
  shifts = [int(augment_params.hue_shift(h)) for h in (0.15, -0.15, -0.001, 0.0039)]
  assert shifts == [38, 218, 0, 0]


@pytest.mark.parametrize("radius", [0.0, 0.05, 0.21, 0.33, 0.4999])
def test_blur_matches_pil(radius):
  image = rand_image(3)
  want = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))).astype(int)
  got = augment_host.gaussian_blur(tf.constant(image[None]), tf.constant([radius]), 0.5).numpy()[0]
  diff = np.abs(got - want)
  # Pillow's fixed-point sums are evaluated in float32 here: rare ties round the other way.
  assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def reference_frame(image, params, n):
  """One frame as SeqSet.get_sample does it with PIL: blur, ops in this frame's order, shift."""
  im = Image.fromarray(image).filter(ImageFilter.GaussianBlur(float(params["blur_radius"][n])))
  for op in params["order"][n]:
    im = PIL_OPS[op](im, float(params[PARAM[op]]))
  ox, oy = (int(v) for v in params["offset"])
  im = im.transform(im.size, Image.AFFINE, (1, 0, ox, 0, 1, oy), resample=Image.NEAREST)
  return np.asarray(im).astype(int)


def test_clip_matches_pil_reference_per_frame():
  frames = np.stack([rand_image(s, (36, 50)) for s in range(6)])
  params = augment_params.sample_params(tf.constant([5, 9]), 6, 50)
  clip = {"image": tf.constant(frames), "intrinsics": tf.constant(np.tile(K, (6, 1, 1)))}
  got = augment_host.apply_params(clip, params, augment.AugmentConfig(chunk_frames=2))  # 3 chunks
  params = {k: v.numpy() for k, v in params.items()}
  assert np.any(params["offset"] != 0)
  for n in range(6):
    diff = np.abs(got["image"].numpy()[n].astype(int) - reference_frame(frames[n], params, n))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.03, n


def clip_with_joints(num=4):
  joints3d, joints2d = (np.stack(a) for a in zip(*[frame_joints(1, r) for r in range(num)]))
  return {k: tf.constant(v) for k, v in dict(
      image=np.stack([frame_image(1, r) for r in range(num)]), intrinsics=np.tile(K, (num, 1, 1)),
      joints2d=joints2d, joints25d=np.concatenate([joints2d, joints3d[..., 2:]], -1),
      joints3d=joints3d).items()}


def test_geometry_projection_stays_consistent():
  clip = clip_with_joints()
  for seed in range(5):
    out = {k: v.numpy() for k, v in augment_host.augment_clip(clip, tf.constant([seed, 1])).items()}
    uvw = np.einsum("tij,tkj->tki", out["intrinsics"], out["joints3d"])
    np.testing.assert_allclose(uvw[..., :2] / uvw[..., 2:], out["joints25d"][..., :2], atol=1e-3)
    np.testing.assert_allclose(out["joints2d"], out["joints25d"][..., :2])
    np.testing.assert_array_equal(out["joints3d"], clip["joints3d"].numpy())
    np.testing.assert_array_equal(out["joints25d"][..., 2], out["joints3d"][..., 2])
    np.testing.assert_array_equal(out["intrinsics"][:, :, :2], np.tile(K[:, :2], (4, 1, 1)))


def test_translation_is_exact_with_black_fill():
  clip = clip_with_joints()
  src = clip["image"].numpy()
  for seed in range(4):
    params = augment_params.sample_params(tf.constant([seed, 2]), 4, W, NO_COLOUR)
    ox, oy = (int(v) for v in params["offset"])
    assert abs(ox) <= 0.1 * W and abs(oy) <= 0.1 * W
    out = augment_host.apply_params(clip, params, NO_COLOUR)
    want = np.zeros_like(src)
    ys, xs = slice(max(0, -oy), min(H, H - oy)), slice(max(0, -ox), min(W, W - ox))
    want[:, ys, xs] = src[:, max(0, oy): min(H, H + oy), max(0, ox): min(W, W + ox)]
    np.testing.assert_array_equal(out["image"].numpy(), want)
    pil = Image.fromarray(src[0]).transform((W, H), Image.AFFINE, (1, 0, ox, 0, 1, oy),
                                            resample=Image.NEAREST)
    np.testing.assert_array_equal(out["image"].numpy()[0], np.asarray(pil))
    np.testing.assert_allclose(out["intrinsics"].numpy()[:, :2, 2],
                               np.tile(K[:2, 2] - [ox, oy], (4, 1)))


def test_colour_leaves_geometry_alone():
  clip = clip_with_joints()
  config = augment.AugmentConfig(center_jittering=0.0)
  out = augment_host.augment_clip(clip, tf.constant([3, 3], tf.int64), config)
  for key in ("intrinsics", "joints2d", "joints25d", "joints3d"):
    np.testing.assert_array_equal(out[key].numpy(), clip[key].numpy())
  assert np.any(out["image"].numpy() != clip["image"].numpy())


def test_factors_per_clip_order_per_frame():
  num = 24
  params = augment_params.sample_params(tf.constant([1, 2], tf.int64), num, W)
  for name in ("brightness", "saturation", "contrast", "hue"):
    assert params[name].shape == ()  # one draw per clip
  assert 0.5 <= float(params["brightness"]) <= 1.5 and abs(float(params["hue"])) <= 0.15
  order = params["order"].numpy()
  assert all(sorted(row) == [0, 1, 2, 3] for row in order)
  assert len({tuple(row) for row in order}) > 1  # reshuffled per frame
  radius = params["blur_radius"].numpy()
  assert len(set(radius)) == num and radius.min() >= 0 and radius.max() < 0.5
  # Identical frames, no blur: same output iff same order, so the factors are shared.
  same = tf.constant(np.repeat(rand_image(1)[None], num, 0))
  out = augment_host.photometric(same, params, augment.AugmentConfig(blur_radius=0)).numpy()
  for a in range(num):
    for b in range(a + 1, num):
      if (order[a] == order[b]).all():
        np.testing.assert_array_equal(out[a], out[b])
  assert len({out[n].tobytes() for n in range(num)}) > 1


def test_zero_amounts_skip_blur_and_colour_exactly(monkeypatch):
  """All amounts 0 (the demo): the reader skips blur and colour jitter. Exact only because each op
  is then the identity, which the ops themselves show here on their own zero-amount draws."""
  zero = augment.AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, blur_radius=0)
  assert not zero.photometric
  for name in ("brightness", "contrast", "saturation", "hue", "blur_radius"):
    assert dataclasses.replace(zero, **{name: 0.01}).photometric, name
  num = 12
  images = tf.constant(np.stack([rand_image(n) for n in range(num)]))
  params = augment_params.sample_params(tf.constant([3, 4], tf.int64), num, W, zero)
  assert float(params["brightness"]) == float(params["saturation"]) == 1.0
  assert float(params["contrast"]) == 1.0 and not params["blur_radius"].numpy().any()
  ran = augment_host.color_jitter(images, params["order"], params["brightness"],
                                  params["saturation"], params["contrast"], params["hue"],
                                  hue_enabled=False)  # hue 0: the reference skips the op
  np.testing.assert_array_equal(ran.numpy(), images.numpy())
  blurred = augment_host.gaussian_blur(images, params["blur_radius"], 0.5)
  np.testing.assert_array_equal(blurred.numpy(), images.numpy())

  def fail(*args, **kwargs):
    raise AssertionError("a photometric op ran with every amount 0")

  monkeypatch.setattr(augment_host, "color_jitter", fail)
  monkeypatch.setattr(augment_host, "gaussian_blur", fail)
  assert augment_host.photometric(images, params, zero) is images
  with pytest.raises(AssertionError, match="amount 0"):
    augment_host.photometric(images, params, dataclasses.replace(zero, contrast=1e-9))


# ------------------------------------------------------------------------------------------------
# The pipeline.

def test_eval_is_identity_in_order_with_padding(data_dir):
  config = make_config(data_dir, eval_batch_size=6)
  batches = list(input_pipeline.create_dataset(config, "train", False, process_index=0,
                                               process_count=1).as_numpy_iterator())
  expected = [(v, s) for v, n in enumerate(LENGTHS) for s in reference_starts(n, train=False)]
  assert len(batches) == -(-len(expected) // 6)
  got = []
  for batch in batches:
    assert batch["image"].shape == (6, T, H, W, 3) and batch["image"].dtype == np.uint8
    for i in np.flatnonzero(batch["valid"]):
      v, start = int(batch["video_index"][i]), int(batch["start_frame"][i])
      got.append((v, start))
      assert batch["video_id"][i] == f"video_{v}".encode()
      for n, raw in enumerate(batch["frame_idx"][i]):
        np.testing.assert_array_equal(batch["image"][i, n], frame_image(v, raw))
        np.testing.assert_allclose(batch["joints25d"][i, n, :, :2], frame_joints(v, raw)[1])
      np.testing.assert_array_equal(batch["intrinsics"][i], np.tile(K, (T, 1, 1)))
  assert sorted(got) == sorted(expected) and len(got) == len(expected)
  assert sum(b["valid"].sum() for b in batches) == len(expected)


def test_epoch_covers_each_training_start_once(data_dir):
  config = make_config(data_dir, batch_size=1)
  expected = sorted((v, s) for v, n in enumerate(LENGTHS) for s in reference_starts(n))
  manifest = input_pipeline.load_manifest(str(data_dir), "train")
  steps = input_pipeline.steps_per_epoch(manifest, 1)
  assert steps == len(expected) == manifest["clips"]["train"]
  epoch = take(config, steps + 5, num_epochs=1)
  assert len(epoch) == steps
  got = [(int(b["video_index"][0]), int(b["start_frame"][0])) for b in epoch]
  assert sorted(got) == expected
  assert got != expected  # shuffled
  assert epoch[0]["image"].shape == (1, T, H, W, 3) and epoch[0]["image"].dtype == np.uint8
  dtypes = {k: v.dtype for k, v in epoch[0].items() if k != "image"}
  assert dtypes == dict(intrinsics=np.float32, not_padding=np.float32, joints25d=np.float32,
                        joints3d=np.float32, hand_valid=np.float32, object=np.int32,
                        action=np.int32, video_index=np.int32, start_frame=np.int32,
                        frame_idx=np.int32)
  # Padding frames repeat the record's last frame (reference.md §3.5).
  for b in epoch:
    frames, valid = b["frame_idx"][0], b["not_padding"][0]
    assert valid[0] == 1 and np.all(np.diff(valid) <= 0)
    assert np.all(frames[valid == 0] == frames[valid == 1][-1])


def test_consecutive_clips_come_from_different_records(data_dir):
  """A record holds up to t clips of one video; the epoch must not emit them as a run (batches of
  near-identical clips), but one clip per record per pass, as a globally shuffled epoch would."""
  # A small buffer: the mixing must come from the pass structure, not from buffering a whole epoch.
  config = make_config(data_dir, batch_size=1, **{"dataset.shuffle_buffer": 4})
  epoch = take(config, 100, num_epochs=1)
  # Training start = block * T * spacing + offset * spacing + parity (reference.md §3.4).
  records = [(int(b["video_index"][0]), int(b["start_frame"][0]) // (T * SPACING),
              int(b["start_frame"][0]) % SPACING) for b in epoch]
  num_records = len(set(records))
  assert len(set(records[:num_records])) == num_records  # the first pass: every record once
  # Only where one pass ends and the next begins can a record follow itself.
  assert sum(a == b for a, b in zip(records, records[1:])) <= WIN - 1


def test_an_epoch_reads_from_every_shard_at_once(tmp_path):
  """Shards hold whole videos in split order: read a few at a time, the first clips of an epoch
  would all be of the first videos read (reference.md §6.26). By default every shard (up to 64)
  is read at once, so the first 10 clips of 10 one-video shards come from nearly 10 videos."""
  write_split(tmp_path, lengths=(9,) * 10)
  config = make_config(tmp_path, batch_size=1, **{"dataset.shuffle_buffer": 2})
  first = [int(b["video_index"][0]) for b in take(config, 10, num_epochs=1)]
  assert len(set(first)) >= 8, first
  # Four shards at a time (the default before): the first 10 clips come from at most 6 videos.
  config.dataset.cycle_length = 4
  first = [int(b["video_index"][0]) for b in take(config, 10, num_epochs=1)]
  assert len(set(first)) <= 6, first


def test_training_without_augmentation_gives_the_stored_frames(data_dir):
  off = dict(brightness=0, contrast=0, saturation=0, hue=0, blur_radius=0, center_jittering=0)
  config = make_config(data_dir, **{"dataset.augment": off})
  for batch in take(config, 2):
    for i, (v, frames) in enumerate(zip(batch["video_index"], batch["frame_idx"])):
      np.testing.assert_array_equal(batch["image"][i], np.stack([frame_image(v, f)
                                                                 for f in frames]))


def test_epochs_reshuffle_and_drop_the_remainder(data_dir):
  config = make_config(data_dir)  # batch 4: 61 clips -> 15 batches, one clip dropped
  two = take(config, 100, num_epochs=2)
  assert len(two) == 2 * 15
  first, second = ([(int(v), int(s)) for b in half for v, s in zip(b["video_index"],
                                                                    b["start_frame"])]
                   for half in (two[:15], two[15:]))
  assert len(set(first)) == 60 and len(set(second)) == 60 and first != second


def test_deterministic_and_seeded(data_dir):  # augmentation included
  config = make_config(data_dir)
  a, b, c = take(config, 2), take(config, 2), take(config, 2, seed=123)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(np.any(x["image"] != z["image"]) for x, z in zip(a, c))


def test_resume_replays_the_same_batches(data_dir):
  config = make_config(data_dir, **{"dataset.host_sharding": "batch"})
  fresh = take(config, 18)
  resumed = take(config, 2, start_step=16)
  for x, y in zip(fresh[16:], resumed):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_batch_sharding_matches_single_process(data_dir):
  config = make_config(data_dir, **{"dataset.host_sharding": "batch"})
  single = take(config, 3)
  hosts = [take(config, 3, process_index=p, process_count=2) for p in range(2)]
  for step in range(3):
    assert hosts[0][step]["image"].shape[0] == 2
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][step][key], hosts[1][step][key]]), single[step][key])


def test_files_sharding_is_disjoint(data_dir):
  config = make_config(data_dir, batch_size=2, **{"dataset.host_sharding": "files"})
  seen = []
  for p in range(2):
    batches = take(config, 100, process_index=p, process_count=2, num_epochs=1)
    seen.append({(int(v), int(s)) for b in batches for v, s in zip(b["video_index"],
                                                                   b["start_frame"])})
    assert {v for v, _ in seen[-1]} == {p, p + 2}  # shards p, p + 2
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 61
  config.batch_size = 5
  with pytest.raises(ValueError, match="at least one shard per process"):
    input_pipeline.create_dataset(config, "train", True, process_index=0, process_count=5)


@pytest.mark.parametrize("key,value,field", [("model.num_frames", 16, "num_frames"),
                                             ("model.window", 8, "window"),
                                             ("dataset.image_size", (64, 128), "image_size")])
def test_manifest_mismatch_names_the_config_key(data_dir, key, value, field):
  config = make_config(data_dir, **{key: value})
  with pytest.raises(ValueError, match=rf"config\.{key}=.*train\.manifest\.json.*{field}="):
    input_pipeline.create_dataset(config, "train", True, process_index=0, process_count=1)


def test_steps_per_epoch():
  assert input_pipeline.steps_per_epoch({"clips": {"train": 61}}, 4) == 15
  with pytest.raises(ValueError, match="fewer than config.batch_size"):
    input_pipeline.steps_per_epoch({"clips": {"train": 3}}, 4)


# ------------------------------------------------------------------------------------------------
# augment.on_device: the same augmentation in JAX, inside the training step (augment/device.py).

@pytest.mark.parametrize("radius", [0.0, 0.05, 0.21, 0.33, 0.4999])
def test_device_blur_is_bit_exact_to_pil(radius):
  from htt_jax.augment import device as augment_device  # pylint: disable=g-import-not-at-top
  image = rand_image(3)
  want = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
  params = augment_params.sample_params(tf.constant([1, 2]), 1, image.shape[1])
  params["blur_radius"] = tf.constant([radius], tf.float32)
  taps = augment_params.device_params(params)["aug_blur_weights"].numpy()
  got = np.asarray(augment_device.gaussian_blur(image[None], taps))[0]
  np.testing.assert_array_equal(got, want)  # Pillow's integer sums, not float32 ones


def test_device_augmentation_matches_pil_and_the_reader():
  from htt_jax.augment import device as augment_device  # pylint: disable=g-import-not-at-top
  frames = np.stack([rand_image(s, (36, 50)) for s in range(6)])
  for seed, config in ((5, augment.AugmentConfig()), (6, augment.AugmentConfig(hue=0)),
                       (7, augment.AugmentConfig(blur_radius=0))):
    params = augment_params.sample_params(tf.constant([seed, 9]), 6, 50, config)
    on_device = {k: v.numpy() for k, v in augment_params.device_params(params, config).items()}
    got = np.asarray(jax.jit(functools.partial(augment_device.augment_clip,
                                               hue_enabled=config.hue > 0))(frames, on_device))
    host = augment_host.translate_images(
        augment_host.photometric(tf.constant(frames), params, config), params["offset"]).numpy()
    params = {k: v.numpy() for k, v in params.items()}
    assert np.any(params["offset"] != 0)
    # The reader's TF ops: the same except where its float32 blur sums round a tie the other way.
    diff = np.abs(got.astype(int) - host)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, seed
    if config.blur_radius > 0 and config.hue > 0:  # Pillow's own result, frame by frame
      for n in range(6):
        diff = np.abs(got[n].astype(int) - reference_frame(frames[n], params, n))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, n


def test_on_device_batches_train_like_reader_augmented_ones(data_dir):
  """The reader with augment.on_device leaves the pixels alone (labels already moved) and adds the
  params; the training step's augmentation then gives the pixels the host reader gives for the
  same (seed, epoch, batch, row), and the training step the same loss as on the host's batch."""
  from htt_jax import steps  # pylint: disable=g-import-not-at-top
  from htt_jax.augment import device as augment_device  # pylint: disable=g-import-not-at-top
  # The shards' object labels are frame % 5: five classes (with smoke's 4 the object loss is NaN,
  # and NaN == NaN to assert_allclose).
  host_config = make_config(data_dir, **{"model.num_objects": 5})
  device_config = make_config(data_dir, **{"model.num_objects": 5,
                                           "dataset.augment.on_device": True})
  for host, device in zip(take(host_config, 2), take(device_config, 2)):
    assert augment_device.has_params(device) and not augment_device.has_params(host)
    for i, (v, frames) in enumerate(zip(device["video_index"], device["frame_idx"])):
      np.testing.assert_array_equal(device["image"][i], np.stack([frame_image(v, f)
                                                                  for f in frames]))
    for key in host:
      if key != "image":
        np.testing.assert_array_equal(device[key], host[key], err_msg=key)
    on_device = np.asarray(jax.jit(augment_device.augment_batch)(device)).astype(int)
    # Pillow's rounding ties: the host's float32 blur sums can round a tie the other way.
    diff = np.abs(on_device - host["image"])
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # The augmentation did change the pixels, so the comparison above is not vacuous.
    assert np.abs(on_device - device["image"]).mean() > 5

  # The loss of the step that augments on the device, against the step on the host-augmented batch
  # (the last pair above): an independent expectation, not augment_batch's own output.
  state = steps.create_train_state(host_config, jax.random.key(0), steps_per_epoch=10)
  step = lambda config: jax.jit(functools.partial(steps.train_step, config=config))
  batch_device = {k: v for k, v in device.items() if k != "video_id"}
  batch_host = {k: v for k, v in host.items() if k != "video_id"}
  _, from_device = step(device_config)(state, batch_device)
  _, from_host = step(host_config)(state, batch_host)
  for key in ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action"):
    assert np.isfinite(from_host[key]), key
    np.testing.assert_allclose(from_device[key], from_host[key], rtol=1e-5, err_msg=key)
  # Without the augmentation the loss would differ (the check can fail).
  _, unaugmented = step(host_config)(state, dict(batch_host, image=batch_device["image"]))
  moved = abs(float(unaugmented["loss"]) - float(from_host["loss"]))
  assert moved > 1e-5 * float(from_host["loss"]), moved
