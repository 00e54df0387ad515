"""cpu_flags: the YNNPACK setting a process gets; the float32 fusions change no values."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from htt_jax import config_lib, cpu_flags

OURS = "HTT_JAX_YNN_FLAG_SET_BY_HTT_JAX"


@pytest.fixture
def clean_env(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(OURS, raising=False)
  return monkeypatch


def _ynn(flags):
  return [f for f in flags.split() if f.startswith(cpu_flags.YNN_FLAG)]


def test_safe_default_is_off_and_keeps_other_flags(clean_env):
  clean_env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  cpu_flags.set_safe_default()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                             cpu_flags.OFF]


def _config(dtype="float32", batch_norm="frozen"):
  config = config_lib.base_config()
  config.dtype, config.model.batch_norm = dtype, batch_norm
  return config


def test_fusions_follow_the_dtype_of_every_run(clean_env, monkeypatch):
  from jax._src import xla_bridge  # this test process has started JAX; pretend it has not
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  # Nothing set yet (importing htt_jax sets nothing): off must be written, JAX's default is on.
  assert cpu_flags.configure([_config("bfloat16")]) == cpu_flags.OFF
  assert _ynn(os.environ["XLA_FLAGS"]) == [cpu_flags.OFF]
  clean_env.delenv("XLA_FLAGS")
  cpu_flags.set_safe_default()
  # float32, either BatchNorm: the reduction fusions (with the elementwise ones it was slower).
  assert cpu_flags.configure([_config()]) == "--xla_cpu_experimental_ynn_fusion_type=reduce"
  assert _ynn(os.environ["XLA_FLAGS"]) == [cpu_flags.FLOAT32_FUSIONS]
  # A child process inherits both variables and may choose again (a bfloat16 sweep, say).
  assert cpu_flags.configure([_config(), _config("bfloat16")]) == cpu_flags.OFF
  assert _ynn(os.environ["XLA_FLAGS"]) == [cpu_flags.OFF]
  assert cpu_flags.configure([_config(batch_norm="batch")]) == f"{cpu_flags.YNN_FLAG}=reduce"
  assert cpu_flags.configure([_config(batch_norm="batch"), _config()]) == cpu_flags.FLOAT32_FUSIONS
  assert cpu_flags.configure([_config("bfloat16", batch_norm="batch")]) == cpu_flags.OFF
  assert cpu_flags.configure([config_lib.base_config()]) == cpu_flags.FLOAT32_FUSIONS


def test_users_own_setting_is_never_changed(clean_env, monkeypatch):
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  clean_env.setenv("XLA_FLAGS", f"{cpu_flags.YNN_FLAG}=dot")
  cpu_flags.set_safe_default()
  assert cpu_flags.configure([_config()]) == f"{cpu_flags.YNN_FLAG}=dot"
  assert os.environ["XLA_FLAGS"] == f"{cpu_flags.YNN_FLAG}=dot"
  clean_env.setenv("XLA_FLAGS", cpu_flags.OFF)  # explicitly off, also for float32
  assert cpu_flags.configure([_config()]) == cpu_flags.OFF


def test_no_change_once_jax_has_started(clean_env):
  import jax
  jax.devices()  # the backend reads XLA_FLAGS here, once
  cpu_flags.set_safe_default()
  assert cpu_flags.configure([_config()]) == cpu_flags.OFF
  assert _ynn(os.environ["XLA_FLAGS"]) == [cpu_flags.OFF]


_CHILD = """
import functools, sys
import numpy as np
from htt_jax import config_lib, cpu_flags
config = config_lib.base_config()  # float32, stored-statistics BatchNorm: fusions on
if sys.argv[1] == "on":
  print("FLAG", cpu_flags.configure([config]))
else:
  cpu_flags.set_safe_default()  # what the test session and bfloat16 runs get
  print("FLAG", cpu_flags.OFF)
import jax, jax.numpy as jnp
from flax import linen as nn
from htt_jax.models import initializers, resnet
out = {}
x = jax.random.normal(jax.random.key(0), (4, 72, 128, 3))
model = resnet.ResNet18(cpu_kernels=True)  # as build_model makes it on the CPU
out["features"] = jax.jit(model.apply)(model.init(jax.random.key(1), x[:1]), x)
# Per layer (through the whole net a 1e-6 change moves units across ReLU kinks, test_model.py):
# folded convolution + BatchNorm + ReLU; gradients for its parameters (bias: a sum over N, H, W)
# and its input.
conv = functools.partial(nn.Conv, use_bias=False, kernel_init=initializers.torch_conv_kernel)
norm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)
for name, features, kernel, strides, shape in (("stem", 64, 7, 2, (8, 72, 128, 3)),
                                               ("layer1", 64, 3, 1, (8, 18, 32, 64))):
  class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, inputs):
      pad = ((kernel // 2,) * 2,) * 2
      return nn.relu(resnet.conv_bn(inputs, features, kernel, strides, pad, "conv", "bn",
                                    conv=conv, norm=norm, folded=True, dtype=jnp.float32,
                                    cpu_kernels=True))
  inputs = jax.random.normal(jax.random.key(2), shape)
  variables = ConvBN().init(jax.random.key(3), inputs)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(4), v.shape),
                           variables)
  variables["batch_stats"]["bn"]["var"] = jnp.abs(variables["batch_stats"]["bn"]["var"])
  def loss(params, inputs):
    y = ConvBN().apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))
  g_params, g_inputs = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], inputs)
  out[name + "/input"] = g_inputs
  for path, g in jax.tree_util.tree_leaves_with_path(g_params):
    out[name + jax.tree_util.keystr(path)] = g
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
"""


def test_float32_fusions_give_the_same_values_and_gradients(tmp_path):
  """With YNNPACK's float32 fusions (the scripts' float32 setting) the backbone's features and a
  layer's gradients equal those without (the test session's and bfloat16's setting) to float32
  rounding."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OURS)}
  env["JAX_PLATFORMS"] = "cpu"
  results = {}
  for mode in ("on", "off"):
    out = tmp_path / f"{mode}.npz"
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = cpu_flags.FLOAT32_FUSIONS if mode == "on" else cpu_flags.OFF
    assert f"FLAG {expected}" in proc.stdout
    results[mode] = dict(np.load(out))
  on, off = results["on"], results["off"]
  assert sorted(on) == sorted(off) and len(on) == 9, sorted(on)
  for key in off:
    scale = np.abs(off[key]).max()
    assert scale > 0, key
    np.testing.assert_allclose(on[key], off[key], atol=1e-5 * scale, err_msg=key)


def test_bfloat16_on_the_cpu_warns_unless_the_fusions_are_off(clean_env, monkeypatch):
  assert not cpu_flags.warn_if_unsafe_for_bfloat16()  # JAX's default: fusions on
  clean_env.setenv("XLA_FLAGS", cpu_flags.FLOAT32_FUSIONS)
  assert not cpu_flags.warn_if_unsafe_for_bfloat16()
  clean_env.setenv("XLA_FLAGS", cpu_flags.OFF)
  assert cpu_flags.warn_if_unsafe_for_bfloat16()
  # build_model asks for bfloat16 on the CPU only.
  from htt_jax.models import htt  # pylint: disable=g-import-not-at-top
  asked = []
  monkeypatch.setattr(htt.cpu_flags, "warn_if_unsafe_for_bfloat16", lambda: asked.append(1))
  htt.build_model(_config())
  assert not asked
  htt.build_model(_config("bfloat16"))
  assert asked == [1]


_MALLOC_CHILD = """
import resource, sys
from htt_jax import cpu_flags
if sys.argv[1] == "on":
  cpu_flags.MALLOC_MAX_CPUS = 10**6  # whatever this machine has
  assert cpu_flags.configure_malloc()
import jax, jax.numpy as jnp
# A 64 MB buffer per call (the output, dropped at once), above glibc's mmap threshold like
# XLA:CPU's temporaries in a train step, and allocated the same way.
f = jax.jit(lambda x: jnp.sin(x) * 2)
x = jnp.ones((4096, 4096), jnp.float32) * 1e-3
faults = []
for _ in range(24):  # The heap grows over the first calls (up to 8 here), then holds.
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("FAULTS", sorted(faults[-4:])[1])  # the lower median of the last 4 calls
"""


def _faults_per_call(setting):
  env = {k: v for k, v in os.environ.items()
         if k not in cpu_flags._USER_MALLOC_ENV + ("LD_PRELOAD", cpu_flags.MALLOC_ENV)}
  out = subprocess.run([sys.executable, "-c", _MALLOC_CHILD, setting], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True).stdout
  return int(out.split("FAULTS")[1])


def test_one_malloc_arena_keeps_xla_temporaries_from_being_faulted_in_at_every_call():
  # glibc's default: every call's 64 MB buffer comes from a fresh mmap, its 4 KiB pages faulted
  # in one by one (16,384 a call); with configure_malloc the heap keeps the memory between calls
  # once it has grown (0 from the 7th-9th call on, 2026-12-06).
  default, configured = _faults_per_call("off"), _faults_per_call("on")
  assert default >= 16_000, default
  assert configured < 200, (configured, default)


def test_malloc_is_left_alone_when_the_environment_or_the_machine_says_so(monkeypatch):
  monkeypatch.setattr(cpu_flags, "_malloc_configured", False)
  monkeypatch.setattr(cpu_flags.machine, "available_cpus", lambda: 2)
  for key in cpu_flags._USER_MALLOC_ENV + ("LD_PRELOAD", cpu_flags.MALLOC_ENV):
    monkeypatch.delenv(key, raising=False)  # conftest sets HTT_JAX_MALLOC=glibc for the session
  for key, value in (("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"), ("MALLOC_ARENA_MAX", "4"),
                     ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2"), (cpu_flags.MALLOC_ENV, "glibc")):
    with monkeypatch.context() as env:
      env.setenv(key, value)
      assert not cpu_flags.configure_malloc(), key
  monkeypatch.setattr(cpu_flags.machine, "available_cpus", lambda: cpu_flags.MALLOC_MAX_CPUS + 1)
  assert not cpu_flags.configure_malloc()  # many CPUs: one arena would serialise their mallocs
