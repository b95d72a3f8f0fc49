"""Models, feature extractors and autoencoders built from the steps' typed specs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..model.ddas import build_feature_extractor, feature_dim, init_autoencoder
from ..model.moe import MoESpec
from .specs import Backbone, FeatureSpec, NumericSpeed, Runtime

if TYPE_CHECKING:  # open_clip is imported where a CLIP is built: an autoencoder job needs none of it
    from ..model.clip import BackboneSpec, MoECLIP


def resolve_device(want: str) -> torch.device:
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device: cuda, but no CUDA device is available")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def apply_speed(speed: NumericSpeed) -> None:
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = speed.tf32


def backbone_spec(b: Backbone) -> BackboneSpec:
    from ..model.clip import BackboneSpec

    return BackboneSpec(b.name, b.quick_gelu, b.pretrained)


def configure(model: MoECLIP, speed: NumericSpeed, runtime: Runtime | None) -> MoECLIP:
    """Apply the speed switches: the exact ones from the runtime, the approximate ones from the spec."""
    if runtime is not None:
        model.batched_experts = runtime.batched_experts
        model.truncate_text = runtime.truncate_text
    if speed.bf16_autocast:
        model.autocast_dtype = torch.bfloat16
    if speed.compile:
        model.compile_regions()
    return model


def adapted_model(spec, runtime: Runtime | None, device: torch.device | str = "cpu", init_seed: int = 0) -> MoECLIP:
    """The backbone with adapters shaped by `spec.model` (a TaskSpec or an EvaluateSpec), one router per task."""
    from ..model.clip import build_model

    b = getattr(spec, "backbone", None) or Backbone(spec.model.name, spec.model.quick_gelu, spec.model.pretrained)
    model = build_model(backbone_spec(b), MoESpec.from_model(spec.model, spec.num_tasks), init_seed, device)
    return configure(model, spec.speed, runtime)


def zero_shot_model(backbone: Backbone, speed: NumericSpeed, runtime: Runtime | None, device="cpu") -> MoECLIP:
    """Plain CLIP behind the MoECLIP interface (only the zero-shot route is used: adapters are a placeholder)."""
    from ..model.clip import MoECLIP, create_backbone

    placeholder = MoESpec(num_experts=1, top_k=1, bottleneck=1, num_routers=1, dropout=0.0, scale=0.0, noise_epsilon=0.0)
    bspec = backbone_spec(backbone)
    model = MoECLIP(create_backbone(bspec), placeholder, bspec, init_seed=0).to(device)
    return configure(model, speed, runtime)


def image_size_of(model: MoECLIP) -> int:
    s = model.clip.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def feature_extractor(f: FeatureSpec):
    return build_feature_extractor(f.kind, weights=f.weights, pixel_size=f.pixel_size)


def autoencoder_template(index: int, image_size: int, extractor, code_dim: int, seed: int):
    """Autoencoder `index` at its deterministic initial weights."""
    return init_autoencoder(index, feature_dim(extractor, image_size), code_dim, seed)


def paper_moe_spec() -> MoESpec:
    """The paper's adapter shape (22 experts, top-2, one router per task of Order I), from the default config."""
    from ..config import load_config

    rc = load_config()
    return MoESpec.from_model(rc.model, len(rc.datasets))
