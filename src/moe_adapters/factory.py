"""Build models, trainers' configs and data handles from a validated run config."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ddas_lr, ddas_threshold, iterations, task_lr
from .ddas import DDASOptions, build_feature_extractor, feature_dim, init_autoencoder
from .model import BackboneSpec, MoECLIP, build_model
from .moe import MoESpec
from .prepared import PreparedDataset
from .protocol import load_protocol, order_datasets
from .train import AETrainConfig, TaskTrainConfig


def resolve_device(cfg: dict) -> torch.device:
    want = cfg["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device: cuda, but no CUDA device is available")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def apply_speed_settings(cfg: dict) -> None:
    torch.backends.cuda.matmul.allow_tf32 = cfg["speed"]["tf32"]
    torch.backends.cudnn.allow_tf32 = cfg["speed"]["tf32"]


def order_names(cfg: dict, order: str | None = None) -> list[str]:
    return order_datasets(load_protocol(cfg["benchmark"], cfg["protocol"]), order or cfg["order"])


def backbone_spec(cfg: dict, weights_override: str | None = None) -> BackboneSpec:
    m = cfg["model"]
    return BackboneSpec(m["name"], m["quick_gelu"], weights_override or m["pretrained"])


def moe_spec(cfg: dict, num_tasks: int | None = None) -> MoESpec:
    m = cfg["model"]
    return MoESpec(
        num_experts=m["num_experts"],
        top_k=m["top_k"],
        bottleneck=m["bottleneck"],
        num_routers=num_tasks if num_tasks is not None else len(order_names(cfg)),
        dropout=m["expert_dropout"],
        scale=m["expert_scale"],
        noise_epsilon=m["noise_epsilon"],
    )


def model_from_config(cfg: dict, device: torch.device | str = "cpu", weights: str | None = None) -> MoECLIP:
    model = build_model(backbone_spec(cfg, weights), moe_spec(cfg), device)
    model.batched_experts = cfg["speed"]["batched_experts"]
    model.truncate_text = cfg["speed"]["truncate_text"]
    if cfg["speed"]["bf16_autocast"]:
        model.autocast_dtype = torch.bfloat16
    if cfg["speed"]["compile"]:
        model.compile_regions()
    return model


def image_size(model: MoECLIP) -> int:
    s = model.clip.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def config_image_size(cfg: dict) -> int:
    """The model's input resolution, read from its open_clip config without building it."""
    import open_clip

    from .model import register_model_configs

    register_model_configs()
    model_cfg = open_clip.get_model_config(cfg["model"]["name"])
    if model_cfg is None:
        raise ValueError(f"open_clip has no model config {cfg['model']['name']!r}")
    s = model_cfg["vision_cfg"].get("image_size", 224)
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def task_train_config(cfg: dict, dataset: str, img_size: int) -> TaskTrainConfig:
    t = cfg["train"]
    return TaskTrainConfig(
        lr=task_lr(cfg, dataset),
        iterations=iterations(cfg),
        batch_size=t["batch_size"],
        warmup=t["warmup"],
        weight_decay=t["weight_decay"],
        beta1=t["beta1"],
        beta2=t["beta2"],
        label_smoothing=t["label_smoothing"],
        seed=t["seed"],
        freeze_top=t["freeze_top"],
        few_shot=cfg["shots"],
        checkpoint_every=t["checkpoint_every"],
        num_workers=t["num_workers"],
        image_size=img_size,
    )


def ae_train_config(cfg: dict, generic: bool, img_size: int) -> AETrainConfig:
    d = cfg["ddas"]
    return AETrainConfig(
        iterations=d["iterations_generic"] if generic else d["iterations"],
        lr=ddas_lr(cfg),
        weight_decay=d["weight_decay"],
        batch_size=d["batch_size"],
        decay_every_epochs=d["decay_every_epochs"],
        seed=cfg["train"]["seed"],
        checkpoint_every=cfg["train"]["checkpoint_every"],
        num_workers=cfg["train"]["num_workers"],
        image_size=img_size,
    )


def ddas_options(cfg: dict) -> DDASOptions:
    d = cfg["ddas"]
    return DDASOptions(
        threshold=ddas_threshold(cfg),
        only_trained=d["only_trained"],
        per_sample=d["per_sample"],
        batch_size=cfg["eval"]["batch_size"],
    )


def feature_extractor(cfg: dict):
    d = cfg["ddas"]
    return build_feature_extractor(d["feature"], weights=d["feature_weights"], pixel_size=d["pixel_size"])


def autoencoder_template(cfg: dict, index: int, img_size: int, extractor=None):
    """Autoencoder `index` at its deterministic initial weights."""
    extractor = extractor if extractor is not None else feature_extractor(cfg)
    return init_autoencoder(
        index, feature_dim(extractor, img_size), cfg["ddas"]["code_dim"], cfg["train"]["seed"]
    )


def prepared_dataset(cfg: dict, name: str, verify: bool = False) -> PreparedDataset:
    return PreparedDataset(Path(cfg["data_root"]) / name, verify=verify)
