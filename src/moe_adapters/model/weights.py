"""The pretrained weights a run reads, looked up without loading them (`moe-adapters prepare --check-all`).

A paper run reads two sets of weights besides its data: the CLIP backbone (model.pretrained: an open_clip tag,
ViT-B/16 'openai' by default, read from a pre-filled Hugging Face cache or ~/.cache/clip, or a local file) and,
for DDAS, torchvision's ImageNet AlexNet (ddas.feature_weights: the torch hub cache, or a file). Without them
the first backbone, features or autoencoder job fails; this check names both, with where each is looked for and
how to get it, before any job runs. Only paths are looked at (no network, nothing loaded).
"""

from __future__ import annotations

from ..config import RunConfig


class MissingRunWeightsError(FileNotFoundError):
    """One or more pretrained weights files a run needs are not on this machine (the message lists each)."""


def check_weights(rc: RunConfig) -> tuple[dict[str, str], list[str]]:
    """({what: path} of the weights present, [one message per missing one: what, where, how to get it])."""
    from .clip import BackboneSpec, MissingWeightsError, _resolve_pretrained
    from .ddas import MissingFeatureWeightsError, alexnet_weights

    found: dict[str, str] = {}
    missing: list[str] = []
    m = rc.model
    if m.pretrained is not None:
        what = f"{m.name} '{m.pretrained}' (CLIP backbone, model.pretrained)"
        try:
            found[what] = str(_resolve_pretrained(BackboneSpec(m.name, m.quick_gelu, m.pretrained)))
        except MissingWeightsError as e:
            missing.append(f"{what}: {e}")
    if rc.ddas.feature == "alexnet":
        what = "AlexNet ImageNet (DDAS features, ddas.feature_weights)"
        try:
            found[what] = str(alexnet_weights(rc.ddas.feature_weights))
        except MissingFeatureWeightsError as e:
            missing.append(f"{what}: {e}")
    return found, missing
