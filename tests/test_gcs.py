"""Cloud Storage paths (gs://) against a local emulator started by the test
(tests/gcs_emulator.py), and what TensorFlow itself writes on ram:// (its GCS client cannot reach
an emulator: docs/launch.md, "Cloud Storage"). Nothing of the storage layer is mocked (one test
makes storage.rename fail midway, as a lost connection would); objects are checked through the
emulator's JSON API directly, not through the code under test. Also the launch recipes' configs
(configs/fpha_tpu_pod.py, configs/fpha_gpu_slurm.py).
"""

import functools
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, prepare_tiny_synthetic
from gcs_emulator import gcs  # noqa: F401  (the fixture)
from htt_jax import checkpointing, cli, config_lib, input_pipeline, storage

T = 8  # frames per clip of the tiny dataset (prepare_tiny_synthetic's default)


def _overrides(data_dir):
  return {"dataset.data_dir": data_dir, "model.num_frames": T, "model.window": T,
          "eval_batch_size": 2, "dataset.num_parallel_calls": 1}


def _config(data_dir):
  config = load_config("smoke")
  for key, value in _overrides(data_dir).items():
    node, name = config, key
    if "." in key:
      head, name = key.split(".")
      node = config[head]
    node[name] = value
  return config


def _random_variables(config):
  """Small random weights of the model's shapes, without compiling the initialiser."""
  from htt_jax.models import build_model, init_variables  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(functools.partial(init_variables, build_model(config), config=config),
                          jax.random.key(0))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda leaf: rng.normal(0, 0.02, leaf.shape).astype(leaf.dtype), shapes)


def _script(name, *args, cwd, env_extra):
  return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                        capture_output=True, text=True, timeout=600, cwd=cwd,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
                             **env_extra})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return prepare_tiny_synthetic(tmp_path_factory.mktemp("gcs_data"), splits=("train", "test"))


def test_every_writer_on_gcs_is_atomic_and_reads_back(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land here, as ./gs:/...
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig = plt.figure(figsize=(1, 1))
  storage.write_json(gcs.url("w/a.json"), {"b": 1})
  storage.write_text(gcs.url("w/a.txt"), "text\n")
  storage.save_npz(gcs.url("w/deep/a.npz"), {"x": np.arange(3)})
  storage.save_figure(gcs.url("w/a.png"), fig)
  plt.close(fig)
  with storage.replacing(gcs.url("w/a.zip")) as local:  # a writer that wants a file name
    assert not storage.is_url(local)
    with open(local, "wb") as f:
      f.write(b"zip bytes")
    assert gcs.objects("w/") == ["w/a.json", "w/a.png", "w/a.txt", "w/deep/a.npz"]  # not yet
  assert gcs.objects("w/") == ["w/a.json", "w/a.png", "w/a.txt", "w/a.zip", "w/deep/a.npz"]
  assert json.loads(gcs.download("w/a.json")) == {"b": 1}
  assert gcs.download("w/a.zip") == b"zip bytes"
  assert gcs.download("w/a.png")[:8] == b"\x89PNG\r\n\x1a\n"
  with np.load(io.BytesIO(gcs.download("w/deep/a.npz"))) as npz:
    np.testing.assert_array_equal(npz["x"], np.arange(3))
  # The reading side, through storage.
  assert storage.read_text(gcs.url("w/a.txt")) == "text\n"
  assert storage.exists(gcs.url("w/a.txt")) and not storage.exists(gcs.url("w/none"))
  assert storage.isdir(gcs.url("w")) and sorted(storage.listdir(gcs.url("w"))) == [
      "a.json", "a.png", "a.txt", "a.zip", "deep"]
  assert storage.size(gcs.url("w/a.zip")) == 9
  # An object written by another client (TensorFlow's shards, tensorstore, another host) after a
  # listing was read is seen (gcsfs caches listings: storage.py drops the cache).
  gcs.upload("w/other.bin", b"12345")
  assert storage.exists(gcs.url("w/other.bin")) and storage.size(gcs.url("w/other.bin")) == 5
  assert "other.bin" in storage.listdir(gcs.url("w"))
  storage.remove(gcs.url("w/other.bin"))
  assert not storage.exists(gcs.url("w/other.bin"))

  # A writer that fails half-way leaves the old object and no temporary.
  def half_then_fail(f):
    f.write(b'{"new": ')
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    storage.write_with(gcs.url("w/a.json"), half_then_fail)
  with pytest.raises(RuntimeError, match="disk full"):
    storage.write_with(gcs.url("w/fresh.json"), half_then_fail)
  with pytest.raises(KeyboardInterrupt):
    with storage.replacing(gcs.url("w/a.zip")) as local:
      with open(local, "wb") as f:
        f.write(b"partial")
      raise KeyboardInterrupt
  assert gcs.objects("w/") == ["w/a.json", "w/a.png", "w/a.txt", "w/a.zip", "w/deep/a.npz"]
  assert json.loads(gcs.download("w/a.json")) == {"b": 1}
  assert gcs.download("w/a.zip") == b"zip bytes"
  assert os.listdir(tmp_path) == []


def test_missing_bucket_and_object_are_clear_errors(gcs, tmp_path, monkeypatch, tiny_data):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="cannot write gs://no-such-bucket/m.json: its "
                     "bucket does not exist"):
    storage.write_json("gs://no-such-bucket/m.json", {})
  with pytest.raises(FileNotFoundError, match="cannot write to gs://no-such-bucket/run: its "
                     "bucket or folder does not exist"):
    storage.check_writable("gs://no-such-bucket/run")
  storage.check_writable(gcs.url("ok"))  # the probe is removed again
  assert gcs.objects("ok") == []
  with pytest.raises(FileNotFoundError, match=r"no manifest: .* split 'test' \(expected "
                     r"gs://htt-test/no-data/test.manifest.json\)"):
    input_pipeline.load_manifest(gcs.url("no-data"), "test")
  with pytest.raises(FileNotFoundError, match="checkpoint directory 'gs://htt-test/no-run' does "
                     "not exist"):
    checkpointing.restore_variables(gcs.url("no-run"))
  # gcsfs's own message for a missing object is its request path only ('b/htt-test/o/nope.npz').
  from htt_jax import inference  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError,
                     match=r"^cannot read --clips=gs://htt-test/nope\.npz: no such file$"):
    inference.load_clips(gcs.url("nope.npz"), f"--clips={gcs.url('nope.npz')}")
  # A shard listed in a manifest in the bucket but missing there.
  manifest = json.loads(storage.read_text(os.path.join(tiny_data, "test.manifest.json")))
  gcs.upload("partial/test.manifest.json", json.dumps(manifest).encode())
  with pytest.raises(FileNotFoundError, match="gs://htt-test/partial/test-00000-of-00001.tfrecord "
                     "is listed in gs://htt-test/partial/test.manifest.json but missing"):
    input_pipeline.load_manifest(gcs.url("partial"), "test")
  # The emulator accepts any request (no credentials, no permissions to model): what can be
  # shown here is that a destination that cannot be written is a PermissionError naming it, which
  # scripts report as one `error:` line (cli.PATH_ERRORS).
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(PermissionError, match=r"cannot write to .*a_file/out \(\w+Error: .*check "
                     "the path, the credentials"):
    storage.check_writable(str(tmp_path / "a_file" / "out"))
  assert PermissionError in cli.PATH_ERRORS
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_writer_output_on_a_url_equals_local_output(tiny_data, tmp_path, monkeypatch):
  """prepare_data's writer with output on ram:// (TensorFlow's in-memory file system, in this
  process: TensorFlow writes the shards, storage the plan and the manifest) writes what it writes
  locally, and the readers read it back from there."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  url = "ram://htt_test_gcs/data"
  prepare_tiny_synthetic(url, splits=("test",))
  names = sorted(tf.io.gfile.listdir(url))
  assert names == sorted(n for n in os.listdir(tiny_data) if n.startswith("test")), names
  for name in names:
    with tf.io.gfile.GFile(f"{url}/{name}", "rb") as f:
      assert f.read() == open(os.path.join(tiny_data, name), "rb").read(), name
  manifest = input_pipeline.load_manifest(url, "test", _config(url))
  assert manifest == input_pipeline.load_manifest(tiny_data, "test")
  prepare_tiny_synthetic(url, splits=("test",))  # a rerun finds the split complete
  clips = list(reader.read_clips(url, "test"))
  local = list(reader.read_clips(tiny_data, "test"))
  assert len(clips) == len(local) == manifest["clips"]["eval"]
  np.testing.assert_array_equal(clips[-1]["image"], local[-1]["image"])
  assert os.listdir(tmp_path) == []  # no local folder named ram:


def test_checkpoint_evaluate_and_predict_with_everything_in_the_bucket(gcs, tiny_data, tmp_path,
                                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)  # where ./gs:/... would appear
  config = _config(tiny_data)
  variables = _random_variables(config)
  checkpointing.save_variables(gcs.url("run", "checkpoints"), variables, step=3,
                               metadata={"source": "test", "step": 3})
  assert "run/checkpoints/3/variables/manifest.ocdbt" in gcs.objects("run/checkpoints/")
  restored, metadata = checkpointing.restore_variables(gcs.url("run", "checkpoints"))
  assert metadata == {"source": "test", "step": 3}
  jax.tree.map(np.testing.assert_array_equal, restored, variables)

  overrides = [f"--config.{k}={v}" for k, v in _overrides(tiny_data).items()]
  run = _script("evaluate.py", f"--config={ROOT / 'configs' / 'smoke.py'}",
                f"--workdir={gcs.url('run')}", "--split=test", *overrides, cwd=tmp_path,
                env_extra=gcs.env)
  assert run.returncode == 0, run.stderr[-4000:]
  written = gcs.objects("run/eval/")
  assert written == [f"run/eval/test/{n}" for n in (
      "joints3d.npz", "joints3d.png", "joints3d_cent.npz", "joints3d_cent.png", "metrics.json",
      "predictions.npz")], written
  report = json.loads(gcs.download("run/eval/test/metrics.json"))
  assert report["checkpoint_step"] == 3 and report["split"] == "test"
  assert report == json.loads(run.stdout[run.stdout.index("{"):])

  rng = np.random.default_rng(1)
  clips = {"images": rng.integers(0, 256, (2 * T, 72, 128, 3), dtype=np.uint8),
           "intrinsics": np.tile(np.array([[100, 0, 64], [0, 100, 36], [0, 0, 1]], np.float32),
                                 (2 * T, 1, 1)),
           "not_padding": np.ones((2 * T,), np.float32)}
  buffer = io.BytesIO()
  np.savez(buffer, **clips)
  gcs.upload("in/clips.npz", buffer.getvalue())
  run = _script("predict.py", f"--config={ROOT / 'configs' / 'smoke.py'}",
                f"--config.model.num_frames={T}", f"--config.model.window={T}",
                f"--checkpoint_dir={gcs.url('run', 'checkpoints')}",
                f"--clips={gcs.url('in', 'clips.npz')}", f"--output={gcs.url('out', 'p.npz')}",
                cwd=tmp_path, env_extra=gcs.env)
  assert run.returncode == 0, run.stderr[-4000:]
  assert gcs.objects("out/") == ["out/p.npz"]
  with np.load(io.BytesIO(gcs.download("out/p.npz"))) as out:
    assert out["joints3d"].shape == (2 * T, 21, 3)
    np.testing.assert_allclose(out["action_probs"].sum(-1), 1.0, rtol=1e-5)
  # A bucket that does not exist: one error line naming it, before the checkpoint is read.
  run = _script("predict.py", f"--config={ROOT / 'configs' / 'smoke.py'}",
                f"--config.model.num_frames={T}", f"--config.model.window={T}",
                f"--checkpoint_dir={gcs.url('run', 'checkpoints')}",
                f"--clips={gcs.url('in', 'clips.npz')}", "--output=gs://no-such-bucket/p.npz",
                cwd=tmp_path, env_extra=gcs.env)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      "error: cannot write to gs://no-such-bucket: its bucket or folder does not exist")
  assert os.listdir(tmp_path) == []  # nothing in a local folder named gs:


def _metrics_without_timing(records):
  """train_metrics.jsonl's records without the fields that measure time, not the run."""
  return [{k: v for k, v in r.items() if k != "frames_per_second_per_device"} for r in records]


def test_training_in_the_bucket_resumes_like_a_local_run(gcs, tiny_data, tmp_path, monkeypatch):
  """scripts/train.py --workdir=gs://...: 2 steps, then a rerun to 4, equals 4 steps straight in
  a local folder; everything lands in the bucket, nothing in a local folder named gs:."""
  from htt_jax import metrics_log  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # where ./gs:/... would appear
  local, workdir = tmp_path / "local", gcs.url("train")
  args = [f"--config={ROOT / 'configs' / 'smoke.py'}", "--config.checkpoint_every_steps=2",
          *(f"--config.{k}={v}" for k, v in _overrides(tiny_data).items())]
  # The same script and flags for all three runs: the same compiled step (the session's XLA
  # cache compiles it once), so the numbers can be compared exactly.
  for where, more in ((local, ["--config.num_train_steps=4"]),  # TensorBoard on (the default)
                      (workdir, ["--config.num_train_steps=2", "--config.tensorboard=False"]),
                      (workdir, ["--config.num_train_steps=4", "--config.tensorboard=False"])):
    run = _script("train.py", *args, f"--workdir={where}", *more, cwd=tmp_path, env_extra=gcs.env)
    assert run.returncode == 0, run.stderr[-4000:]
  assert "resumed from step 2 (gs://htt-test/train/checkpoints)" in run.stderr
  assert list(local.glob("events.out.tfevents.*")), sorted(os.listdir(local))

  objects = gcs.objects("train/")
  for step in (2, 4):
    assert f"train/checkpoints/{step}/variables/manifest.ocdbt" in objects, objects
  assert "train/train_metrics.jsonl" in objects
  assert not [o for o in objects if "tfevents" in o or o.rsplit("/", 1)[-1].startswith(".")], (
      objects)  # no events (tensorboard=False), no temporaries or write probes left
  from_bucket = metrics_log.read(metrics_log.path_in(workdir))  # through storage (gcsfs)
  assert [r["step"] for r in from_bucket] == [1, 2, 3, 4]
  assert _metrics_without_timing(from_bucket) == _metrics_without_timing(
      metrics_log.read(metrics_log.path_in(str(local))))
  assert from_bucket == [json.loads(line) for line in
                         gcs.download("train/train_metrics.jsonl").decode().splitlines()]
  straight, _ = checkpointing.restore_variables(str(local / "checkpoints"))
  resumed, metadata = checkpointing.restore_variables(gcs.url("train", "checkpoints"))
  assert metadata["step"] == 4
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), straight,
                                          resumed)))
  assert diff <= 1e-6, diff
  assert sorted(os.listdir(tmp_path)) == ["local"]  # nothing in a local folder named gs:


def test_training_into_a_missing_bucket_stops_before_compiling(gcs, tiny_data, tmp_path):
  run = _script("train.py", f"--config={ROOT / 'configs' / 'smoke.py'}",
                "--workdir=gs://no-such-bucket/run",
                *(f"--config.{k}={v}" for k, v in _overrides(tiny_data).items()), cwd=tmp_path,
                env_extra=gcs.env)
  assert run.returncode == 1
  lines = run.stderr.strip().splitlines()
  assert lines[-1] == ("error: cannot write to gs://no-such-bucket/run: its bucket or folder does "
                       "not exist"), lines[-20:]
  # Before JAX started: no device was listed, nothing compiled.
  assert not [line for line in lines if "global devices" in line or "compiled" in line], lines
  assert os.listdir(tmp_path) == []


def test_tensorboard_events_are_written_by_tensorflow_to_a_url():
  """The TensorBoard writer train.py makes writes through TensorFlow's file system: on ram://
  here (TensorFlow's GCS client cannot reach the emulator), the code path of gs:// in a real
  bucket; config.tensorboard=False makes none."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from htt_jax import train  # pylint: disable=g-import-not-at-top
  url = "ram://htt_test_gcs/tensorboard"
  writer = train.metric_writer(url)
  writer.write_scalars(1, {"loss": 0.5})
  writer.flush()
  events = tf.io.gfile.glob(f"{url}/events.out.tfevents.*")
  assert len(events) == 1, tf.io.gfile.listdir(url)
  values = [(e.step, v.tag, float(tf.make_ndarray(v.tensor)))
            for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value]
  assert values == [(1, "loss", 0.5)]
  off = "ram://htt_test_gcs/no_tensorboard"
  writer = train.metric_writer(off, enabled=False)
  writer.write_scalars(1, {"loss": 0.5})
  writer.flush()
  assert not tf.io.gfile.exists(off)


def test_unrestorable_steps_are_set_aside_in_the_bucket(gcs):
  """TrainCheckpointer.set_aside on gs:// (a copy of each object, then a delete): the step's
  objects move to <step>.unrestorable, then .unrestorable2; Orbax no longer lists the step."""
  directory = gcs.url("aside", "checkpoints")
  for _ in range(2):
    checkpointing.save_variables(directory, {"w": np.arange(3.0)}, step=5)
    ckpt = checkpointing.TrainCheckpointer(directory, save_every_steps=1)
    assert ckpt.complete_steps() == ckpt.steps() == [5]
    moved = ckpt.set_aside([5])
    assert ckpt.steps() == [] and ckpt.complete_steps() == []
    ckpt.close()
  assert moved == [f"{directory}/5.unrestorable2"]
  names = {o.split("/")[2] for o in gcs.objects("aside/checkpoints/")}
  assert names == {"5.unrestorable", "5.unrestorable2"}, names


_DISTRIBUTED_PROBE = """
import importlib.util, sys
import jax
from jax._src import cloud_tpu_init
spec = importlib.util.spec_from_file_location("train_script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
calls = []
jax.distributed.initialize = lambda *args, **kwargs: calls.append(args)
for on_tpu_vm, flag in ((False, "auto"), (True, "auto"), (True, "off")):
  cloud_tpu_init.running_in_cloud_tpu_vm = on_tpu_vm
  script.FLAGS([sys.argv[0], "--config=" + sys.argv[2], "--workdir=w", "--distributed=" + flag])
  calls.clear()
  script._start_distributed()
  print(on_tpu_vm, flag, calls)
"""


def test_jax_distributed_starts_on_a_cloud_tpu_vm_only(tmp_path):
  """scripts/train.py calls jax.distributed.initialize() (no arguments: JAX finds them) where
  `import jax` detected a Cloud TPU VM, never on a machine without one or the cluster variables
  (the test's), and not with --distributed=off. JAX's detection is set by hand here: no TPU."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS")}
  run = subprocess.run([sys.executable, "-c", _DISTRIBUTED_PROBE,
                        str(ROOT / "scripts" / "train.py"), str(ROOT / "configs" / "smoke.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**env, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.splitlines() == ["False auto []", "True auto [()]", "True off []"], run.stdout


@pytest.mark.parametrize("name, arg, devices, batch", [
    ("fpha_tpu_pod", None, 16, 64), ("fpha_tpu_pod", "hosts=8", 32, 128),
    ("fpha_tpu_pod", "hosts=2,chips_per_host=8,clips_per_chip=2", 16, 32),
    ("fpha_gpu_slurm", None, 16, 64), ("fpha_gpu_slurm", "nodes=4,clips_per_gpu=1", 32, 32),
])
def test_launch_configs_size_the_global_batch(name, arg, devices, batch):
  """docs/launch.md's recipes: the global batch is hosts x devices per host x clips per device."""
  config = load_config(name, arg)
  config_lib.validate_config(config, num_devices=devices)
  assert config.batch_size == config.eval_batch_size == batch
  assert config.dataset.host_sharding == "files"
  assert config.dtype == "bfloat16" and config.dataset.augment.on_device
  assert (config.model.num_joints, config.model.num_objects, config.model.num_actions) == (
      config_lib.DATASET_HEADS["fpha"])
  with pytest.raises(ValueError, match="unknown option 'host'"):
    load_config(name, "host=2")


def test_predict_video_reads_and_writes_the_bucket_like_local_paths(gcs, tmp_path, monkeypatch):
  """video_predict.predict_video (scripts/predict_video.py's job) with --video and --output_dir
  on gs://: an mp4 streamed from the bucket and a frame folder listed there give the predictions
  of the same inputs read locally; overlay.mp4, the figures and the json land in the bucket, with
  no temporary and nothing in a local folder named gs:. A tiny model (32x32, T=4), compiled once."""
  import av  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from htt_jax import inference, video_predict
  from test_video import moving_frames, random_variables, write_mp4
  # pylint: enable=g-import-not-at-top
  config = load_config("smoke")
  config.dataset.image_size = (32, 32)
  config.model.num_frames, config.model.window = 4, 2
  variables = random_variables(config, seed=5)  # finite outputs that differ between frames
  batch_size = -(-config.eval_batch_size // config.dataset.spacing) * config.dataset.spacing
  predictor = inference.Predictor(config, variables, batch_size=batch_size)
  run = functools.partial(video_predict.predict_video, config, None, variables=variables,
                          intrinsics="40,40,32,24", predictor=predictor)
  local = tmp_path / "local"
  local.mkdir()
  monkeypatch.chdir(tmp_path)  # where ./gs:/... would appear
  length = 12  # two blocks of T*s = 8 frames, the second padded
  frames = moving_frames(length, 48, 64)
  write_mp4(local / "in.mp4", frames, fps=25)  # no faststart: FFmpeg seeks to the index at the end
  gcs.upload("video/in.mp4", (local / "in.mp4").read_bytes())
  (local / "frames").mkdir()
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(local / "frames" / f"{i:03d}.png")
    gcs.upload(f"video/frames/{i:03d}.png", (local / "frames" / f"{i:03d}.png").read_bytes())

  def arrays(npz_bytes):
    with np.load(io.BytesIO(npz_bytes)) as f:
      return {k: f[k] for k in f.files}

  for source, out, more in (("in.mp4", "out_mp4", {}),
                            ("frames", "out_frames", {"overlay": False, "figures": False})):
    want = run(str(local / source), str(local / out), **more)
    got = run(gcs.url("video", source), gcs.url(out), **more)
    expected, actual = (arrays((local / out / "predictions.npz").read_bytes()),
                        arrays(gcs.download(f"{out}/predictions.npz")))
    assert sorted(actual) == sorted(expected)
    assert all(np.isfinite(v).all() for v in actual.values())
    assert np.ptp(actual["joints2d"][:, 0, 0]) > 1e-3
    for key in expected:
      np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6, err_msg=key)
    assert got["video"] == gcs.url("video", source) and got["num_frames"] == length
    # predictions.json: the same but for the video's name, its probabilities to 1e-6.
    probabilities = lambda summary: [e.pop("probability") for e in summary["top5"] +
                                     summary["clips"]]
    got_p, want_p = probabilities(got), probabilities(want)
    np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-6)
    assert {**got, "video": None} == {**want, "video": None}
    in_bucket = json.loads(gcs.download(f"{out}/predictions.json"))
    assert probabilities(in_bucket) == got_p and in_bucket == got
    local_names = sorted(str(p.relative_to(local / out)) for p in (local / out).rglob("*")
                         if p.is_file())
    assert gcs.objects(f"{out}/") == [f"{out}/{n}" for n in local_names]  # no temporary either
  assert "out_mp4/figures/timeline.png" in gcs.objects("out_mp4/")
  with av.open(io.BytesIO(gcs.download("out_mp4/overlay.mp4"))) as container:
    stream = container.streams.video[0]
    assert sum(1 for _ in container.decode(stream)) == length
    assert (stream.height, stream.width, stream.average_rate) == (48, 64, 25)

  # A video missing from the bucket, and an output bucket that does not exist: errors naming
  # them, nothing written.
  with pytest.raises(FileNotFoundError, match=r"^gs://htt-test/video/nope\.mp4: no such video "
                     "file or frame folder$"):
    run(gcs.url("video", "nope.mp4"), gcs.url("out_nope"))
  with pytest.raises(FileNotFoundError, match="^cannot write to gs://no-such-bucket/out: its "
                     "bucket or folder does not exist$"):
    run(gcs.url("video", "in.mp4"), "gs://no-such-bucket/out")
  assert gcs.objects("out_nope") == []
  assert sorted(os.listdir(tmp_path)) == ["local"]  # nothing in a local folder named gs:

  # figures/ is put in place object by object on a URL: a failure after the first copy (a lost
  # connection, a preemption) must not leave part of figures/ (before, 1 of the figures stayed).
  real_rename = storage.rename

  def fails_midway(source, target):
    first = sorted(storage.listdir(source))[0]
    storage.write_bytes(os.path.join(target, first),
                        storage.read_bytes(os.path.join(source, first)))
    raise OSError(f"injected: copying {source} to {target} failed after {first}")

  monkeypatch.setattr(storage, "rename", fails_midway)
  with pytest.raises(OSError, match="injected"):
    run(gcs.url("video", "in.mp4"), gcs.url("out_torn"))
  monkeypatch.setattr(storage, "rename", real_rename)
  assert gcs.objects("out_torn") == []
