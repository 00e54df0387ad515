"""Sweeps: `config.sweep` names config keys and their values; every combination is one setting.

Syntax: `key=v1,v2;other.key=w1,w2`, e.g.
  "batch_size=1,2,4;dataset.image_size=(96,160),(270,480);parallelism=jit,pmap"
Values are Python literals (numbers, tuples, True/False) or bare words (jit, bfloat16). Commas
inside parentheses or brackets belong to the value. Settings are the cartesian product, in the order
given: the first key varies slowest. Each value goes through the config's own type checks.
"""

import ast
import copy
import itertools
from typing import Any, Dict, List, Tuple

import ml_collections

from htt_jax import config_lib


def _split_top_level(text: str, separator: str) -> List[str]:
  parts, depth, current = [], 0, []
  for char in text:
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    if char == separator and depth == 0:
      parts.append("".join(current))
      current = []
    else:
      current.append(char)
  parts.append("".join(current))
  return [p.strip() for p in parts]


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word: 'jit', 'bfloat16'.


def parse_sweep(spec: str) -> List[Tuple[str, List[Any]]]:
  """'a=1,2;b=x' -> [('a', [1, 2]), ('b', ['x'])]."""
  axes = []
  for part in _split_top_level(spec or "", ";"):
    if not part:
      continue
    key, sep, values = part.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
      raise config_lib.ConfigError(
          f"config.sweep: {part!r} is not of the form key=value1,value2,...")
    if key in (k for k, _ in axes):
      raise config_lib.ConfigError(f"config.sweep names {key!r} twice")
    axes.append((key, [_value(v) for v in _split_top_level(values, ",") if v]))
  return axes


def settings(spec: str) -> List[Dict[str, Any]]:
  """Every combination of the sweep's values, as {key: value}; [{}] for no sweep."""
  axes = parse_sweep(spec)
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def apply(config: ml_collections.ConfigDict,
          overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys set; unknown keys and wrong types raise ConfigError."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError) as e:
      raise config_lib.ConfigError(f"config.sweep: {key!r} is not a config key") from e
    except TypeError as e:
      raise config_lib.ConfigError(f"config.sweep: {key}={value!r} has the wrong type ({e})") from e
  return config


def label(overrides: Dict[str, Any]) -> str:
  """'batch_size=2 dataset.image_size=(96, 160)': a setting's name in tables and plots."""
  return " ".join(f"{k}={v}" for k, v in overrides.items()) or "default"
