"""The layering of the library, read from the source with `ast` (no JAX, no TensorFlow):
no import cycle in htt_jax/ and data_pipeline/ (imports inside functions count too), readers
never import the TFRecord writer, and importing the library changes no environment variable."""

import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGES = ("htt_jax", "data_pipeline")
WRITER = "data_pipeline.writer"
# Modules that read records or manifests (or run what does): the format is data_pipeline/schema.py's,
# so none of them may reach the writer, directly or through another module.
READERS = ("data_pipeline.reader", "htt_jax.input_pipeline", "htt_jax.evaluate",
           "htt_jax.inference", "htt_jax.train")


def _modules():
  """{dotted name: path} of every module of the packages."""
  found = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def _imports(name, path, modules):
  """The package modules that `name` imports anywhere in its file (module or function level)."""
  is_package = path.name == "__init__.py"
  targets = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        targets.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's own package
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        # `from package import module` imports the module; `from module import name`, the module.
        targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
  return {t for t in targets if t in modules and t != name}


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph):
  """One import cycle as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_the_graph_sees_function_level_imports(graph):
  # train.py imports import_torch inside a function (torch is optional): it must count.
  assert "htt_jax.import_torch" in graph["htt_jax.train"]
  assert "htt_jax.models" in graph["htt_jax.steps"]


def test_no_import_cycle(graph):
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_model_layer_imports_no_training_code(graph):
  below = _reachable(graph, "htt_jax.models") | _reachable(graph, "htt_jax.import_torch")
  assert not below & {"htt_jax.steps", "htt_jax.train", "htt_jax.parallel"}, sorted(below)


def test_only_the_writer_and_the_tfds_builders_import_the_writer(graph):
  importers = {name for name, targets in graph.items() if WRITER in targets}
  allowed = {n for n in importers if n.startswith("data_pipeline.tfds")}
  assert not {n for n in importers if n.startswith("data_pipeline.")} - allowed, sorted(importers)
  for reader in READERS:
    assert WRITER not in _reachable(graph, reader) | {reader}, f"{reader} reaches {WRITER}"


_ENV_CHECK = """
import json, os, sys
import jax, flax.linen  # JAX sets variables of its own when imported (TPU_SKIP_MDS_QUERY): not ours
before = dict(os.environ)
import htt_jax, htt_jax.models, htt_jax.cpu_flags, htt_jax.steps, htt_jax.import_torch
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps(changed))
"""


def test_importing_the_library_changes_no_environment_variable():
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "HTT_JAX_YNN_FLAG_SET_BY_HTT_JAX")}
  done = subprocess.run([sys.executable, "-c", _ENV_CHECK], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == []
