"""The model: CLIP with a MoE adapter in every block (moe, clip) and the DDAS auto-selector (ddas)."""

from .clip import BackboneSpec, MissingWeightsError, MoECLIP, build_model, create_backbone, tokenizer_for
from .ddas import (
    Autoencoder,
    DDASOptions,
    build_feature_extractor,
    decide_routes,
    feature_dim,
    init_autoencoder,
)
from .moe import ZERO_SHOT, Expert, MoELayer, MoESpec, noisy_top_k_gating

__all__ = [
    "ZERO_SHOT",
    "Autoencoder",
    "BackboneSpec",
    "DDASOptions",
    "Expert",
    "MissingWeightsError",
    "MoECLIP",
    "MoELayer",
    "MoESpec",
    "build_feature_extractor",
    "build_model",
    "create_backbone",
    "decide_routes",
    "feature_dim",
    "init_autoencoder",
    "noisy_top_k_gating",
    "tokenizer_for",
]
