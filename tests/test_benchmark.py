"""The throughput benchmark on tiny settings: every mode writes well-formed rows, the table and the
plot; the analytic FLOP count is checked by hand and against XLA's; sweeps and the peak table."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, load_config
from htt_jax import machine
from htt_jax.benchmark import flops, hardware, runner, sweep

REQUIRED = ("mode", "frames_per_second", "step_time_ms_median", "step_time_ms_p90",
            "compile_time_s", "device_kind", "num_devices", "clips_per_second",
            "frames_per_second_per_device", "versions", "git_commit", "flops_per_frame_analytic",
            "peak_memory_bytes_xla", "mfu", "speedup_vs_baseline", "host_cpu")


def tiny_config(**overrides):
  """configs/benchmark.py:runlocal (72x128, B=1, T=t=16, 1 + 3 steps) with narrow heads."""
  config = load_config("benchmark", "runlocal")
  config.model.hidden_dim, config.model.num_heads, config.model.mlp_dim = 64, 4, 128
  config.dataset.shuffle_buffer = 4
  config.dataset.num_parallel_calls = 1
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def check_outputs(rows, output, mode, count):
  with open(output) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(rows)) and len(written) == count
  for row in written:
    assert set(REQUIRED) <= set(row), set(REQUIRED) - set(row)
    assert row["mode"] == mode and row["num_devices"] == 1 and row["device_kind"]
    assert row["frames_per_second"] > 0 and row["step_time_ms_p90"] >= row["step_time_ms_min"]
    assert row["frames_per_second"] == pytest.approx(
        row["batch_size"] * row["num_frames"] / row["step_time_ms_median"] * 1e3)
    assert row["mfu"] is None and row["peak_tflops_per_device"] is None  # CPU: no peak rate
    assert {"python", "jax", "jaxlib", "flax"} <= set(row["versions"])
  stem = output[:-len(".json")]
  with open(stem + ".md") as f:
    table = f.read()
  assert table.count("\n| ") == count + 1 and "frames/s" in table  # header + one line per row
  with open(stem + ".png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---- Analytic FLOPs -------------------------------------------------------------------------
def test_conv_flops_by_hand():
  # 3x3 conv, stride 1, pad 1, 4x4x2 -> 4x4x3: 16 outputs x 9 taps x 2 x 3 channels, x 2 FLOPs.
  assert flops.conv_flops(4, 4, 2, 3, 3, 1, 1) == (2 * 16 * 9 * 2 * 3, 4, 4)
  # Without the taps on the padding: per axis 2 + 3 + 3 + 2 = 10 taps, so 10 x 10 in 2-D.
  assert flops.conv_flops(4, 4, 2, 3, 3, 1, 1, count_padding=False)[0] == 2 * 100 * 2 * 3
  # The ResNet-18 stem at 224x224: 112 x 112 outputs, 64 filters of 7 x 7 x 3.
  assert flops.resnet18_flops(224, 224)["conv1"] == 2 * 112 * 112 * 64 * 7 * 7 * 3
  # The whole backbone at 224x224: torchvision's published 1.81 G multiply-adds.
  assert sum(flops.resnet18_flops(224, 224).values()) / 2 == pytest.approx(1.814e9, rel=2e-3)
  # One encoder layer, L=3, d=4, m=5: projections 4 L d^2, attention 2 L^2 d, MLP 2 L d m.
  assert flops.encoder_layer_flops(3, 4, 5) == 2 * (4 * 3 * 16 + 2 * 9 * 4 + 2 * 3 * 4 * 5)
  # A training step is forward + twice the forward, less the stem's input gradient.
  config = tiny_config()
  parts = flops.htt_forward_flops(config)
  assert flops.htt_flops_per_clip(config, True) == 3 * sum(parts.values()) - parts["backbone_conv1"]


def test_peak_table_and_device_names():
  assert hardware.chip_name("NVIDIA H100 80GB HBM3") == "h100_sxm"
  assert hardware.chip_name("NVIDIA H100 PCIe") == "h100_pcie"
  assert hardware.chip_name("NVIDIA H200") == "h200_sxm"
  assert hardware.chip_name("NVIDIA A100-SXM4-80GB") == "a100"
  assert hardware.chip_name("TPU v5 lite") == "tpu_v5e"
  assert hardware.chip_name("TPU v5") == "tpu_v5p"
  assert hardware.chip_name("TPU v6 lite") == "tpu_v6e" and hardware.chip_name("TPU v4") == "tpu_v4"
  assert hardware.peak_tflops("TPU v4", "bfloat16") == 275.0
  assert hardware.peak_tflops("TPU v4", "float32") is None
  assert hardware.peak_tflops("cpu", "float32") is None


def test_cpu_description_from_cpuinfo():
  """The widest vector extension tells the two kinds of 2-core machine apart (docs/demo.md)."""
  avx512 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
  assert machine.describe_cpu(avx512) == {"model": "AMD EPYC 9B14", "isa": "AVX-512",
                                           "generation": "Zen 4, family 25 model 17"}
  # Zen 3 (Milan, 0x01) and Zen 5 (Turin, family 0x1A) under the same bare cloud name.
  avx2 = ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
          "flags\t\t: fpu sse4_2 avx avx2 fma\n")
  assert machine.describe_cpu(avx2) == {"model": "AMD EPYC", "isa": "AVX2",
                                         "generation": "Zen 3, family 25 model 1"}
  zen5 = avx2.replace("family\t: 25", "family\t: 26").replace("model\t\t: 1", "model\t\t: 2")
  assert machine.describe_cpu(zen5)["generation"] == "Zen 5, family 26 model 2"
  intel = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Xeon\n"
  assert machine.describe_cpu(intel)["generation"] == "family 6 model 143"  # numbers only
  arm = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
  assert machine.describe_cpu(arm) == {"model": None, "isa": None, "generation": None}
  assert machine.describe_cpu("") == {"model": None, "isa": None, "generation": None}
  summary = machine.cpu_summary()  # this machine's: model, isa, and the CPUs it may use
  assert summary.endswith(f"{machine.available_cpus()} CPU" +
                          ("s" if machine.available_cpus() != 1 else ""))
  cpu = machine.host_cpu()
  assert (cpu["model"] or "unknown CPU") in summary and (cpu["isa"] or "") in summary
  assert (cpu["generation"] or "") in summary


def test_cpu_summary_says_when_xla_code_is_held_to_a_narrower_isa(monkeypatch):
  """A timing with XLA_FLAGS=--xla_cpu_max_isa=AVX2 on an AVX-512 CPU is not the CPU's own."""
  assert machine.xla_isa_limit("") is None
  assert machine.xla_isa_limit("--xla_cpu_max_isa=") is None
  assert machine.xla_isa_limit("--xla_force_host_platform_device_count=2 "
                                "--xla_cpu_max_isa=AVX2") == "AVX2"
  assert machine.xla_isa_limit("--xla_cpu_max_isa=AVX --xla_cpu_max_isa=SSE4_2") == "SSE4_2"
  monkeypatch.setattr(machine, "host_cpu", lambda: {"model": "AMD EPYC", "isa": "AVX-512",
                                                     "generation": "Zen 5, family 26 model 2"})
  monkeypatch.setattr(machine, "available_cpus", lambda: 2)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
  assert machine.cpu_summary() == \
      "AMD EPYC (Zen 5, family 26 model 2), AVX-512 (XLA code held to AVX2), 2 CPUs"
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=reduce")
  assert machine.cpu_summary() == "AMD EPYC (Zen 5, family 26 model 2), AVX-512, 2 CPUs"


def test_sweep_is_a_typed_cartesian_product():
  config = tiny_config()
  config.lock()
  spec = "batch_size=1,2;dataset.image_size=(96,160),(72,128);parallelism=jit,pmap;model.remat=True"
  settings = sweep.settings(spec)
  assert len(settings) == 8 and settings[0] == {
      "batch_size": 1, "dataset.image_size": (96, 160), "parallelism": "jit", "model.remat": True}
  assert settings[-1]["batch_size"] == 2 and settings[-1]["parallelism"] == "pmap"
  applied = sweep.apply(config, settings[0])
  assert applied.dataset.image_size == (96, 160) and config.dataset.image_size == (72, 128)
  assert sweep.settings("") == [{}]
  with pytest.raises(ValueError, match="'nope' is not a config key"):
    sweep.apply(config, {"nope": 1})
  with pytest.raises(ValueError, match="batch_size='x' has the wrong type"):
    sweep.apply(config, {"batch_size": "x"})
  with pytest.raises(ValueError, match="not of the form"):
    sweep.parse_sweep("batch_size")


# ---- Modes ----------------------------------------------------------------------------------
def test_train_mode_and_xla_flops_match_the_analytic_count(tmp_path):
  output = str(tmp_path / "train.json")
  rows = runner.run_benchmark(tiny_config(), "train", output)
  check_outputs(rows, output, "train", 1)
  row = rows[0]
  assert row["compile_time_s"] > 0 and row["peak_memory_bytes_xla"] > 0
  # XLA counts only the kernel taps inside the image; so does the unpadded analytic count.
  assert row["flops_per_frame_xla"] == pytest.approx(row["flops_per_frame_analytic_unpadded"],
                                                     rel=0.1)
  # The model count (taps on the padding too) is larger, by the share of padded taps.
  assert row["flops_per_frame_analytic_unpadded"] < row["flops_per_frame_analytic"] < (
      1.3 * row["flops_per_frame_xla"])


def test_eval_mode_sweeps_batch_size_and_parallelism(tmp_path):
  output = str(tmp_path / "eval.json")
  rows = runner.run_benchmark(tiny_config(sweep="batch_size=1,2;parallelism=jit,pmap"), "eval",
                              output)
  check_outputs(rows, output, "eval", 4)
  assert [(r["batch_size"], r["parallelism"]) for r in rows] == [
      (1, "jit"), (1, "pmap"), (2, "jit"), (2, "pmap")]
  assert rows[3]["setting"] == "batch_size=2 parallelism=pmap"
  assert rows[3]["overrides"] == {"batch_size": 2, "parallelism": "pmap"}
  for row in rows:  # The forward pass alone: a third of a training step's FLOPs, roughly.
    assert row["flops_per_frame_xla"] == pytest.approx(
        flops.htt_flops_per_frame(tiny_config(), False, count_padding=False), rel=0.1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from data_pipeline import synthetic, writer  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("synthetic")
  source = synthetic.SyntheticConfig(seed=5, num_videos=2, frames=(40, 48), image_size=(72, 128))
  writer.prepare_split(synthetic.iter_videos(source, "train"), str(out), "train", num_frames=16,
                       window=16, spacing=2, vocabulary=synthetic.load_vocabulary(source),
                       dataset_name="synthetic", image_size=(72, 128), progress=False)
  return str(out)


def test_input_mode_from_the_command_line(data_dir, tmp_path):
  output = tmp_path / "input.json"
  command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"),
             "--config=" + str(ROOT / "configs" / "benchmark.py") + ":runlocal", "--mode=input",
             f"--output={output}", f"--config.dataset.data_dir={data_dir}",
             "--config.dataset.shuffle_buffer=4", "--config.timed_steps=3"]
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  with open(output) as f:
    (row,) = json.load(f)
  assert set(REQUIRED) <= set(row), set(REQUIRED) - set(row)
  assert row["mode"] == "input" and row["timed_steps"] == 3 and row["frames_per_second"] > 0
  assert row["compile_time_s"] is None and row["flops_per_frame_xla"] is None
  assert "tensorflow" in row["versions"]
  assert row["host_cpu"] == machine.cpu_summary()  # which machine: AVX2 or AVX-512, how many CPUs
  assert (tmp_path / "input.md").exists() and (tmp_path / "input.png").exists()
  assert f"({row['host_cpu']})" in (tmp_path / "input.md").read_text().splitlines()[0]


def test_end_to_end_mode(data_dir, tmp_path):
  output = str(tmp_path / "e2e.json")
  rows = runner.run_benchmark(tiny_config(**{"dataset.data_dir": data_dir}), "end_to_end", output)
  check_outputs(rows, output, "end_to_end", 1)
  assert rows[0]["first_batch_s"] > 0 and rows[0]["flops_per_frame_xla"] > 0


def test_pipeline_modes_need_a_data_dir():
  with pytest.raises(ValueError, match="set --config.dataset.data_dir"):
    runner.run_benchmark(tiny_config(), "input")
  with pytest.raises(ValueError, match="config.num_devices=64"):
    runner.run_benchmark(tiny_config(num_devices=64), "train")
  for key, value, low in (("warmup_steps", -1, 0), ("timed_steps", 0, 1)):
    config = tiny_config()
    config[key] = value
    with pytest.raises(ValueError, match=f"config.{key}={value} must be an integer >= {low}"):
      runner.run_benchmark(config, "train")


# ---- The backbone alone: --mode=backbone and --mode=conv_layers --------------------------------
def test_resnet18_convolutions_by_hand():
  """ResNet-18's 20 convolutions in 11 distinct shapes (at 96x160 layer4 works on 6x10 -> 3x5
  maps, hand-computed): the walk that both the FLOP count and --mode=conv_layers use."""
  shapes = flops.resnet18_convolutions(96, 160)
  assert len(shapes) == 11 and sum(s.count for s in shapes) == 20
  assert shapes[0] == ("stem", 96, 160, 3, 64, 7, 2, 3, 1)
  assert shapes[1] == ("layer1", 24, 40, 64, 64, 3, 1, 1, 4)
  assert shapes[-3] == ("layer4 3x3/2", 6, 10, 256, 512, 3, 2, 1, 1)
  assert shapes[-1] == ("layer4 3x3", 3, 5, 512, 512, 3, 1, 1, 3)


def backbone_config(**overrides):
  """A batch of 2 frames of 72x128: the backbone modes time batch_size x T frames."""
  return tiny_config(**{"model.num_frames": 2, "model.window": 2, **overrides})


def test_backbone_mode_times_forward_and_backward(tmp_path):
  output = str(tmp_path / "backbone.json")
  (row,) = runner.run_benchmark(backbone_config(), "backbone", output)
  with open(output) as f:
    assert json.load(f) == [json.loads(json.dumps(row))]
  assert row["mode"] == "backbone" and row["num_devices"] == 1 and row["device_kind"]
  assert row["frames"] == 2 and row["timed_steps"] == 3 and row["compile_time_s"] > 0
  # The step is forward + backward; the backward is what the forward leaves of it.
  assert row["step_time_ms_median"] == row["forward_backward_time_ms_median"]
  assert row["forward_backward_time_ms_median"] > row["forward_time_ms_median"] > 0
  assert row["backward_time_ms_median"] == pytest.approx(
      row["forward_backward_time_ms_median"] - row["forward_time_ms_median"])
  assert row["frames_per_second"] == pytest.approx(2 / row["step_time_ms_median"] * 1e3)
  parts = flops.resnet18_flops(72, 128)
  assert row["flops_per_frame_analytic"] == 3 * sum(parts.values()) - parts["conv1"]
  assert row["mfu"] is None and row["speedup_vs_baseline"] is None  # CPU; no baseline asked
  with open(tmp_path / "backbone.md") as f:
    table = f.read()
  assert table.startswith("# ResNet-18 alone") and table.count("\n| ") == 2
  with open(tmp_path / "backbone.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_conv_layers_mode_times_each_convolution(tmp_path):
  from htt_jax.models import convolution  # pylint: disable=g-import-not-at-top
  output = str(tmp_path / "conv.json")
  (row,) = runner.run_benchmark(backbone_config(**{"model.num_frames": 1, "model.window": 1}),
                                "conv_layers", output)
  shapes = flops.resnet18_convolutions(72, 128)
  layers = row["layers"]
  assert [e["layer"] for e in layers if e["implementation"] == "lax"] == [s.name for s in shapes]
  # A second entry where the model computes the convolution as a sum over taps instead (on CPU,
  # where these tests run, the model is built with its CPU workarounds).
  expected_taps = [s.name for s in shapes if convolution.use_taps(
      (s.height, s.width), (s.kernel, s.kernel), (s.stride,) * 2, ((s.padding,) * 2,) * 2)]
  assert [e["layer"] for e in layers if e["implementation"] == "taps"] == expected_taps
  for entry, shape in zip([e for e in layers if e["implementation"] == "lax"], shapes):
    assert entry["count"] == shape.count and entry["input_size"] == [shape.height, shape.width]
    assert all(entry[f"{g}_ms_median"] >= 0 for g in ("forward", "dgrad", "wgrad"))
  assert layers[0]["forward_ms_median"] > 0 and layers[1]["wgrad_ms_median"] > 0
  assert row["compile_time_s"] == pytest.approx(sum(e["compile_time_s"] for e in layers))
  with open(tmp_path / "conv.md") as f:
    assert f.read().count("\n| ") == len(layers) + 1  # header + one line per entry
  with open(tmp_path / "conv.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_script_modes_are_the_runners():
  """scripts/benchmark.py lists its modes without importing JAX; they must be the runner's."""
  import re  # pylint: disable=g-import-not-at-top
  with open(ROOT / "scripts" / "benchmark.py") as f:
    listed = re.search(r'DEFINE_enum\("mode", "train", \[([^\]]*)\]', f.read()).group(1)
  assert re.findall(r'"(\w+)"', listed) == list(runner.MODES)


def test_the_baseline_is_compared_per_gpu_but_over_all_cpu_cores():
  """A row of 2 devices at 100 frames/s in all against a baseline variant at 80 frames/s: each GPU
  is its own device (the baseline got 1 of the 2 clips: 50 / 80); XLA's CPU devices share the
  cores the baseline ran on (it got both clips: 100 / 80). Before, a CPU row was per device."""
  from htt_jax.benchmark import baseline  # pylint: disable=g-import-not-at-top
  config = tiny_config(batch_size=2)
  result = {"device_kind": "x", "torch_version": "t", "threads": 2,
            "variants": [{"variant": "eager_float32", "dtype": "float32",
                          "frames_per_second": 80.0, "step_time_ms_median": 400.0}]}
  for platform, compared, speedup in (("gpu", 2, 50 / 80), ("cpu", 1, 100 / 80)):
    row = {"platform": platform, "num_devices": 2, "frames_per_second": 100.0,
           "frames_per_second_per_device": 50.0}
    assert baseline.compared_devices(row) == compared
    assert baseline.spec(config, "train", compared)["batch_size"] == 2 // compared
    baseline.attach(row, result, config, "train")
    assert row["speedup_vs_baseline"] == pytest.approx(speedup)
    assert row["baseline"]["batch_size"] == 2 // compared
