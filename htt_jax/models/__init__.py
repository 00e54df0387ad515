"""Flax Linen modules of HTT."""

from htt_jax.models.htt import (HTT, ActionBlock, PoseBlock, build_model, init_variables,
                                normalize_images)
from htt_jax.models.resnet import ResNet18
from htt_jax.models.transformer import TransformerEncoder, sinusoidal_encoding
