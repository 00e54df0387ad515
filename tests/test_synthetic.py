"""The synthetic dataset: deterministic, exact geometry, learnable, verbs not solvable per frame."""

import dataclasses
import pickle
import time

import numpy as np
import pytest

from data_pipeline import synthetic

SMALL = synthetic.SyntheticConfig(num_videos={"train": 24, "val": 4, "test": 8}, frames=(40, 64))
ALL = dataclasses.replace(SMALL, verbs=tuple(synthetic.VERBS), objects=tuple(synthetic.OBJECTS),
                          num_videos=36)


def _videos(config, split="train"):
  return list(synthetic.iter_videos(config, split))


def _bones(joints3d):
  """(L, hands*20) bone lengths: each joint to its parent (wrist for the first of each finger)."""
  parents = [0, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19]
  hands = joints3d.reshape(len(joints3d), -1, 21, 3)
  return np.linalg.norm(hands[:, :, 1:] - hands[:, :, parents[1:]], axis=-1).reshape(
      len(joints3d), -1)


def test_deterministic_and_seed_dependent():
  a, b = _videos(SMALL)[:3], _videos(SMALL)[:3]
  other = _videos(dataclasses.replace(SMALL, seed=1))[:3]
  for va, vb, vo in zip(a, b, other):
    assert va.video_id == vb.video_id and va.action == vb.action and va.subject == vb.subject
    np.testing.assert_array_equal(va.joints3d, vb.joints3d)
    np.testing.assert_array_equal(va.joints2d, vb.joints2d)
    for i in (0, len(va) // 2, len(va) - 1):
      np.testing.assert_array_equal(va.load_image(i), vb.load_image(i))
    assert va.joints3d.shape != vo.joints3d.shape or not np.allclose(va.joints3d, vo.joints3d)
    assert not np.array_equal(va.load_image(0), vo.load_image(0))


@pytest.mark.parametrize("num_hands", [1, 2])
def test_shapes_dtypes_and_labels(num_hands):
  config = dataclasses.replace(SMALL, num_hands=num_hands, image_size=(72, 128))
  vocabulary = synthetic.load_vocabulary(config)
  n_o = len(config.objects)
  assert vocabulary["objects"] == list(config.objects)
  assert len(vocabulary["actions"]) == len(config.verbs) * n_o
  videos = _videos(config)
  assert [v.video_id for v in videos] == [f"synthetic/train/{i:04d}" for i in range(24)]
  for v in videos:
    v.validate()
    n, j = len(v), 21 * num_hands
    assert config.frames[0] <= n <= config.frames[1]
    assert v.joints3d.shape == (n, j, 3) and v.joints3d.dtype == np.float32
    assert v.joints2d.shape == (n, j, 2) and v.joints2d.dtype == np.float32
    assert v.intrinsics.dtype == np.float32 and v.image_size == (72, 128)
    assert v.hand_valid.shape == (n, num_hands) and v.hand_valid.all()
    np.testing.assert_array_equal(v.frame_idx, np.arange(n))
    assert v.object.dtype == np.int32 and (v.object == v.action % n_o).all()
    verb, obj = vocabulary["actions"][v.action].split()
    assert config.verbs.index(verb) * n_o + config.objects.index(obj) == v.action
  image = videos[0].load_image(len(videos[0]) - 1)
  assert image.shape == (72, 128, 3) and image.dtype == np.uint8
  with pytest.raises(IndexError):
    videos[0].load_image(len(videos[0]))
  # Every action appears, equally often (24 videos, 16 actions: each once or twice).
  counts = np.bincount([v.action for v in videos], minlength=16)
  assert counts.min() >= 1 and counts.max() - counts.min() <= 1


def test_joints2d_are_the_projection_and_mostly_in_view():
  for size in [(72, 128), (135, 240)]:
    config = dataclasses.replace(ALL, image_size=size, num_hands=2)
    k = synthetic.intrinsics_for(size)
    assert abs(k[0, 0] / size[1] - 348.9 / 480) < 1e-3 and abs(k[1, 1] - k[0, 0]) < 0.1
    assert 0.45 < k[0, 2] / size[1] < 0.5 and 0.5 < k[1, 2] / size[0] < 0.52
    points = []
    for v in _videos(config):
      np.testing.assert_array_equal(v.intrinsics, k)
      x = v.joints3d.astype(np.float64)
      u = k[0, 0] * x[..., 0] / x[..., 2] + k[0, 2]
      w = k[1, 1] * x[..., 1] / x[..., 2] + k[1, 2]
      np.testing.assert_allclose(v.joints2d, np.stack([u, w], -1), atol=1e-3, rtol=0)
      assert 0.25 < v.joints3d[..., 2].min() and v.joints3d[..., 2].max() < 0.8
      points.append(v.joints2d.reshape(-1, 2) / [size[1], size[0]])
    points = np.concatenate(points)
    inside = ((points >= 0) & (points < 1)).all(1).mean()
    near = ((points >= -0.1) & (points < 1.1)).all(1).mean()
    assert inside > 0.9 and near > 0.97, (inside, near)


def test_bone_lengths_constant_in_a_video_and_differ_between_subjects():
  config = dataclasses.replace(ALL, num_hands=2)
  per_subject = {}
  for v in _videos(config) + _videos(config, "test"):
    bones = _bones(v.joints3d)
    assert np.abs(bones - bones[0]).max() < 1e-5
    assert 0.012 < bones.min() and bones.max() < 0.12
    np.testing.assert_allclose(bones[0, :20], bones[0, 20:], atol=1e-6)  # one person's hands
    per_subject.setdefault(v.subject, []).append(bones[0])
  means = {s: np.mean(b, 0) for s, b in per_subject.items()}
  for s, b in per_subject.items():  # the same subject always has the same hand
    assert np.abs(np.array(b) - means[s]).max() < 1e-5
  subjects = sorted(means)
  assert len(subjects) >= 10
  for i, a in enumerate(subjects):
    for b in subjects[i + 1:]:
      assert np.abs(means[a] - means[b]).max() > 1e-3, (a, b)


def test_splits_use_disjoint_subjects():
  subjects = {split: {v.subject for v in _videos(SMALL, split)} for split in synthetic.SPLITS}
  assert [len(subjects[s]) for s in synthetic.SPLITS] == [8, 2, 4]
  assert not subjects["train"] & subjects["test"] and not subjects["train"] & subjects["val"]
  assert not subjects["val"] & subjects["test"]
  with pytest.raises(ValueError, match="unknown split"):
    next(synthetic.iter_videos(SMALL, "dev"))


@pytest.mark.parametrize("pair", [("grab", "place"), ("open", "close"), ("push", "pull")])
def test_opposite_verbs_are_exact_time_reversals(pair):
  """Same draws, opposite verb = the video played backwards, pixels included; so the set of
  single frames of one is the set of the other and only the order tells the verb."""
  n_o = len(ALL.objects)
  forward, backward = (ALL.verbs.index(v) for v in pair)
  for obj in (0, 3):
    a = synthetic._make_scene(ALL, "train", 5, action=forward * n_o + obj)
    b = synthetic._make_scene(ALL, "train", 5, action=backward * n_o + obj)
    np.testing.assert_array_equal(b.joints3d, a.joints3d[::-1])
    np.testing.assert_array_equal(b.occluded, a.occluded[::-1])
    np.testing.assert_array_equal(b.center, a.center[::-1])
    # ... and the motion is real: the video is no palindrome, the hand travels.
    travel = np.linalg.norm(a.joints3d[-1, -21:] - a.joints3d[0, -21:], axis=-1).mean()
    assert travel > 0.03, travel
    render_a, render_b = synthetic._Renderer(ALL, a), synthetic._Renderer(ALL, b)
    n = len(a.joints3d)
    for i in (0, n // 3, n - 1):
      np.testing.assert_array_equal(render_b(i), render_a(n - 1 - i))
  # Directions that tell the pairs apart: grab lifts (v decreases), open turns counter-clockwise.
  a = synthetic._make_scene(ALL, "train", 5, action=forward * n_o)
  if pair[0] == "grab":
    assert a.center[-1, 1] < a.center[0, 1] - 0.05
  elif pair[0] == "open":
    assert a.angle[-1] < a.angle[0] - 0.5
  else:
    assert a.center[-1, 2] > a.center[0, 2] + 0.05


def test_objects_are_visible_and_distinct():
  """Same draws with another object class change a good part of the image."""
  n_o = len(ALL.objects)
  for obj in range(1, n_o):
    a = synthetic._make_scene(ALL, "train", 2, action=0)
    b = synthetic._make_scene(ALL, "train", 2, action=obj)
    for i in (0, len(a.joints3d) - 1):
      diff = np.abs(synthetic._Renderer(ALL, a)(i).astype(int) - synthetic._Renderer(ALL, b)(i))
      assert (diff.max(-1) > 30).mean() > 0.02, (obj, i)


def test_scene_saturation_mutes_everything_but_the_objects():
  """Walls, table, sleeves and occluders keep their brightness and lose contrast between channels
  in proportion; geometry, labels and the objects' own colour stay exactly as they were."""
  vivid, muted, half = (dataclasses.replace(SMALL, scene_saturation=s) for s in (1.0, 0.0, 0.5))
  for subject in range(3):
    for key in ("sleeve", "wall", "table"):
      c1, c0, ch = (synthetic._subject(c, subject)[key] for c in (vivid, muted, half))
      np.testing.assert_allclose(c0, np.full(3, c1.mean()))  # grey of the same brightness
      np.testing.assert_allclose(ch - ch.mean(), 0.5 * (c1 - c1.mean()))
      assert np.ptp(c1) > 5  # a colour to begin with
  scenes = [(synthetic._make_scene(vivid, "train", i), synthetic._make_scene(muted, "train", i))
            for i in range(24)]
  a, b = next(pair for pair in scenes if pair[0].occluded.any())
  np.testing.assert_array_equal(a.joints3d, b.joints3d)
  np.testing.assert_array_equal(a.object_color, b.object_color)
  assert a.action == b.action and a.occluded.tolist() == b.occluded.tolist()
  grey = b.occluder[-1]
  np.testing.assert_allclose(grey, np.full(3, a.occluder[-1].mean()))
  i = int(np.argmax(a.occluded))
  image_a, image_b = synthetic._Renderer(vivid, a)(i), synthetic._Renderer(muted, b)(i)
  # Every pixel of the object's own (unshaded) colour is where it was, and nowhere else...
  colour = tuple(int(x) for x in np.clip(a.object_color, 0, 255))
  on_object = lambda image: (image == colour).all(-1)
  assert on_object(image_a).sum() > 10
  np.testing.assert_array_equal(on_object(image_a), on_object(image_b))
  # ... while the rest of the picture lost most of its colour (background noise keeps a little).
  chroma = lambda image: np.ptp(image.astype(int), axis=-1)[~on_object(image_a)].mean()
  assert chroma(image_b) < 0.5 * chroma(image_a)


def test_occlusion_in_some_frames():
  scenes = [synthetic._make_scene(SMALL, "train", i) for i in range(24)]
  with_occluder = [s for s in scenes if s.occluded.any()]
  assert 0.2 * len(scenes) <= len(with_occluder) <= 0.8 * len(scenes)
  for scene in with_occluder:
    assert 0.1 < scene.occluded.mean() < 0.8
  scene = with_occluder[0]
  i = int(np.argmax(scene.occluded))
  clear = dataclasses.replace(scene, occluded=np.zeros_like(scene.occluded))
  diff = synthetic._Renderer(SMALL, scene)(i) != synthetic._Renderer(SMALL, clear)(i)
  assert diff.any(-1).mean() > 0.005
  none = dataclasses.replace(SMALL, occlusion_prob=0.0)
  assert not any(synthetic._make_scene(none, "train", i).occluded.any() for i in range(24))


def test_load_image_pickles_and_config_checks():
  video = _videos(SMALL)[1]
  video.load_image(3)  # builds the cached background, which must not travel
  copy = pickle.loads(pickle.dumps(video.load_image))
  assert copy._background is None
  np.testing.assert_array_equal(copy(3), video.load_image(3))
  assert synthetic.SyntheticConfig(num_videos=3).videos_in("test") == 3
  for bad in [dict(verbs=("juggle",)), dict(objects=("box", "box")), dict(num_hands=3),
              dict(frames=(10, 5)), dict(seed=-1), dict(object_scale=0.0),
              dict(scene_saturation=1.5), dict(scene_saturation=-0.1)]:
    with pytest.raises(ValueError):
      synthetic.SyntheticConfig(**bad)


def test_rendering_speed(capsys):
  results = []
  for size in [(72, 128), (135, 240)]:
    videos = _videos(dataclasses.replace(SMALL, image_size=size, num_videos=4))
    start, frames = time.perf_counter(), 0
    for v in videos:
      for i in range(len(v)):
        v.load_image(i)
        frames += 1
    results.append(f"{size[0]}x{size[1]}: {frames / (time.perf_counter() - start):.0f}")
  with capsys.disabled():
    print(f"\n[synthetic] rendered frames/s, one process: {', '.join(results)}")
