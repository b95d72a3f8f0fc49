"""What each step reads: one frozen dataclass per step, built from the run configuration.

A step function receives its spec and nothing else from the config, so the spec is exactly the slice of config
the step depends on. The workflow passes each job its spec as `params` (JSON): Snakemake reruns a job when its
spec changes, and only then (upstream changes reach it through its input files). Settings that change no number
(loader workers, resume cadence, the speed-ups tests show to be exact) travel apart, in `Runtime`, and are in no
spec, so switching them reruns nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import util as importlib_util
from pathlib import Path

from ..config import (
    ConfigError,
    ModelConfig,
    ReportConfig,
    RunConfig,
    config_hash,
    deviations,
    digest,
    from_plain,
)

PACKAGE_MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"


@cache
def image_size(model_name: str) -> int:
    """The model's input resolution, from its open_clip JSON config (without importing open_clip)."""
    candidates = [PACKAGE_MODEL_CONFIGS / f"{model_name}.json"]
    spec = importlib_util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "model_configs" / f"{model_name}.json" for p in spec.submodule_search_locations]
    for p in candidates:
        if p.is_file():
            s = json.loads(p.read_text())["vision_cfg"].get("image_size", 224)
            return int(s[0] if isinstance(s, (list, tuple)) else s)
    raise ConfigError(f"config key 'model.name': open_clip has no model config {model_name!r}")


# ---------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class Backbone:
    """Which open_clip model and weights (the frozen CLIP)."""

    name: str
    quick_gelu: bool
    pretrained: str | None


@dataclass(frozen=True)
class NumericSpeed:
    """Speed switches that change numbers (recorded as deviations when on): a job reruns when one flips."""

    tf32: bool
    bf16_autocast: bool
    compile: bool


@dataclass(frozen=True)
class FeatureSpec:
    """The DDAS feature extractor."""

    kind: str
    weights: str
    pixel_size: int


@dataclass(frozen=True)
class Runtime:
    """What changes no number: loader workers, resume cadence, the exact speed-ups. In no spec, in no hash."""

    num_workers: int
    checkpoint_every: int
    batched_experts: bool
    truncate_text: bool
    reuse_features: bool = True  # evaluation: reuse provably unchanged routed features of the previous checkpoint

    def args(self) -> str:
        """The command-line options that carry it (as the workflow's shell commands write them)."""
        return (
            f"--workers {self.num_workers} --checkpoint-every {self.checkpoint_every} "
            f"--batched-experts {int(self.batched_experts)} --truncate-text {int(self.truncate_text)}"
        )


def backbone_of(rc: RunConfig) -> Backbone:
    m = rc.model
    return Backbone(m.name, m.quick_gelu, m.pretrained)


def speed_of(rc: RunConfig) -> NumericSpeed:
    s = rc.speed
    return NumericSpeed(s.tf32, s.bf16_autocast, s.compile)


def feature_of(rc: RunConfig) -> FeatureSpec:
    d = rc.ddas
    return FeatureSpec(d.feature, d.feature_weights, d.pixel_size)


def runtime_of(rc: RunConfig, evaluation: bool = False) -> Runtime:
    return Runtime(
        num_workers=rc.eval.num_workers if evaluation else rc.train.num_workers,
        checkpoint_every=rc.train.checkpoint_every,
        batched_experts=rc.speed.batched_experts,
        truncate_text=rc.speed.truncate_text,
        reuse_features=rc.speed.reuse_features,
    )


# ---------------------------------------------------------------- the steps


@dataclass(frozen=True)
class PrepareSpec:
    """One dataset in the prepared format: what it is (its protocol entries) and the evaluation resolution."""

    benchmark: str
    dataset: str
    protocol: str
    entries: tuple[tuple[str, dict], ...]  # (dataset, protocol entry) in protocol order (the pool's label order)
    image_size: int


@dataclass(frozen=True)
class PretrainSpec:
    """Mini benchmark: the tiny CLIP's contrastive pretraining on the captioned pool."""

    model: str
    dataset: str
    iterations: int
    lr: float
    batch_size: int
    seed: int
    device: str


@dataclass(frozen=True)
class BackboneStepSpec:
    """The backbone check: which weights, whose identity every later step verifies."""

    backbone: Backbone


@dataclass(frozen=True)
class AutoencoderSpec:
    """DDAS autoencoder `index` (0: generic data, k: task k-1)."""

    index: int
    dataset: str
    feature: FeatureSpec
    code_dim: int
    lr: float
    weight_decay: float
    batch_size: int
    decay_every_epochs: int
    iterations: int
    seed: int
    shots: int  # > 0: a fixed subset of this many images per class (the reference's few-shot DDAS)
    image_size: int
    device: str
    speed: NumericSpeed


@dataclass(frozen=True)
class TaskSpec:
    """Training task `task` of the order: its dataset, the model's shape and every training hyper-parameter."""

    task: int
    dataset: str
    num_tasks: int
    model: ModelConfig
    lr: float
    iterations: int
    batch_size: int
    warmup: int
    weight_decay: float
    beta1: float
    beta2: float
    label_smoothing: float
    seed: int
    freeze_top: int
    shots: int
    image_size: int
    device: str
    speed: NumericSpeed


@dataclass(frozen=True)
class FeaturesSpec:
    """Once per test set: zero-shot image features and every autoencoder's error (trained and initial)."""

    dataset: str
    backbone: Backbone
    feature: FeatureSpec
    code_dim: int
    seed: int  # the untrained autoencoders' initialisation
    num_autoencoders: int
    image_size: int
    batch_size: int  # images per forward pass (bit for bit, results may depend on it)
    device: str
    speed: NumericSpeed


@dataclass(frozen=True)
class Decision:
    """The DDAS routing decision (SPEC 5)."""

    enabled: bool
    threshold: float
    only_trained: bool
    per_sample: bool


@dataclass(frozen=True)
class EvaluateSpec:
    """Evaluation of task `task`'s checkpoint (None: zero-shot CLIP) on every dataset of the order."""

    task: int | None
    datasets: tuple[str, ...]
    backbone: Backbone
    model: ModelConfig | None
    num_tasks: int
    decision: Decision | None
    batch_size: int
    device: str
    speed: NumericSpeed


@dataclass(frozen=True)
class ReportSpec:
    """What the reporting steps of a run read: who the run is, its config's identity and deviations, the layout."""

    run: str
    setting: str
    benchmark: str
    order: str
    shots: int
    variant: str | None
    datasets: tuple[str, ...]
    config_hash: str
    deviations: dict
    report: ReportConfig


# ---------------------------------------------------------------- from a run config


def prepare_spec(rc: RunConfig, dataset: str) -> PrepareSpec:
    proto = rc.protocol_data
    if rc.benchmark == "mini" and dataset not in proto["datasets"]:
        names = list(proto["datasets"])  # the pretraining pool captions every dataset's classes
    else:
        names = [dataset] if dataset in proto["datasets"] else []
    entries = tuple((n, proto["datasets"][n]) for n in names)
    return PrepareSpec(rc.benchmark, dataset, rc.protocol, entries, image_size(rc.model.name))


def pretrain_spec(rc: RunConfig) -> PretrainSpec:
    m = rc.mini
    return PretrainSpec(
        rc.model.name, rc.ddas.generic_dataset, m.pretrain_iterations, m.pretrain_lr, m.pretrain_batch_size,
        m.pretrain_seed, rc.device,
    )


def backbone_spec(rc: RunConfig) -> BackboneStepSpec:
    return BackboneStepSpec(backbone_of(rc))


def autoencoder_dataset(rc: RunConfig, index: int) -> str:
    names = rc.datasets
    if not 0 <= index <= len(names):
        raise ConfigError(f"run {rc.run_name} has autoencoders 0..{len(names)}, not {index}")
    return rc.ddas.generic_dataset if index == 0 else names[index - 1]


def autoencoder_spec(rc: RunConfig, index: int) -> AutoencoderSpec:
    d = rc.ddas
    return AutoencoderSpec(
        index=index,
        dataset=autoencoder_dataset(rc, index),
        feature=feature_of(rc),
        code_dim=d.code_dim,
        lr=d.lr,
        weight_decay=d.weight_decay,
        batch_size=d.batch_size,
        decay_every_epochs=d.decay_every_epochs,
        iterations=d.iterations_generic if index == 0 else d.iterations,
        seed=rc.train.seed,
        shots=rc.shots if d.few_shot_autoencoders else 0,
        image_size=image_size(rc.model.name),
        device=rc.device,
        speed=speed_of(rc),
    )


def task_spec(rc: RunConfig, task: int) -> TaskSpec:
    names = rc.datasets
    if not 0 <= task < len(names):
        raise ConfigError(f"run {rc.run_name} has tasks 0..{len(names) - 1}, not {task}")
    t, name = rc.train, names[task]
    return TaskSpec(
        task=task,
        dataset=name,
        num_tasks=len(names),
        model=rc.model,
        lr=t.lr[name],
        iterations=t.iterations,
        batch_size=t.batch_size,
        warmup=t.warmup,
        weight_decay=t.weight_decay,
        beta1=t.beta1,
        beta2=t.beta2,
        label_smoothing=t.label_smoothing,
        seed=t.seed,
        freeze_top=t.freeze_top,
        shots=rc.shots,
        image_size=image_size(rc.model.name),
        device=rc.device,
        speed=speed_of(rc),
    )


def features_spec(rc: RunConfig, dataset: str) -> FeaturesSpec:
    return FeaturesSpec(
        dataset=dataset,
        backbone=backbone_of(rc),
        feature=feature_of(rc),
        code_dim=rc.ddas.code_dim,
        seed=rc.train.seed,
        num_autoencoders=len(rc.datasets) + 1,
        image_size=image_size(rc.model.name),
        batch_size=rc.eval.batch_size,
        device=rc.device,
        speed=speed_of(rc),
    )


def evaluate_spec(rc: RunConfig, task: int | None) -> EvaluateSpec:
    d = rc.ddas
    return EvaluateSpec(
        task=task,
        datasets=tuple(rc.datasets),
        backbone=backbone_of(rc),
        model=rc.model if task is not None else None,
        num_tasks=len(rc.datasets),
        decision=Decision(d.enabled, d.threshold, d.only_trained, d.per_sample) if task is not None else None,
        batch_size=rc.eval.batch_size,
        device=rc.device,
        speed=speed_of(rc),
    )


def report_spec(rc: RunConfig) -> ReportSpec:
    return ReportSpec(
        run=rc.run_name,
        setting=rc.setting,
        benchmark=rc.benchmark,
        order=rc.order,
        shots=rc.shots,
        variant=rc.variant,
        datasets=tuple(rc.datasets),
        config_hash=config_hash(rc),
        deviations=deviations(rc),
        report=rc.report,
    )


# The prepared (MTIL) datasets whose verified raw data a paper class-incremental view is built from.
CIL_SOURCES = {"cifar100": ("CIFAR100",), "tinyimagenet": ("TinyImageNet",)}


@dataclass(frozen=True)
class CILPrepareSpec:
    """The class-incremental view of a dataset: its class names and the prepared datasets it is built from."""

    benchmark: str
    dataset: str
    curated: tuple[tuple[str, str], ...]  # TinyImageNet: (wnid, name) in wnids.txt order; () otherwise
    pool: tuple[str, ...]  # the prepared datasets it is built from, in order (the mini: the five it pools)


@dataclass(frozen=True)
class CILStepSpec:
    """Class-incremental step `step`: its classes (remapped labels), the model's shape, the training schedule."""

    step: int
    dataset: str
    classes: tuple[int, ...]
    class_order: tuple[int, ...]
    num_tasks: int  # routers: one, shared by every step
    model: ModelConfig
    prompt_template: str
    lr: float
    batch_size: int
    epochs: int
    warmup: int
    weight_decay: float
    label_smoothing: float
    seed: int
    image_size: int
    device: str
    speed: NumericSpeed


@dataclass(frozen=True)
class CILEvaluateSpec:
    """Evaluation after class-incremental step `step` (None: zero-shot CLIP after every step) on the test images of
    every class seen so far, with the prompts of all of them."""

    step: int | None
    dataset: str
    step_classes: tuple[tuple[int, ...], ...]  # the classes of every step
    class_order: tuple[int, ...]
    num_tasks: int
    backbone: Backbone
    model: ModelConfig | None
    prompt_template: str
    eval_noise: bool
    eval_transform: str
    batch_size: int
    seed: int
    image_size: int
    device: str
    speed: NumericSpeed


def cil_model(rc: RunConfig) -> ModelConfig:
    """The backbone and adapter settings of `model`, with the class-incremental setting's experts and top-k."""
    from dataclasses import replace

    return replace(rc.model, num_experts=rc.cil.num_experts, top_k=rc.cil.top_k)


def cil_prepare_spec(rc: RunConfig) -> CILPrepareSpec:
    from ..config import cil_protocol

    c, proto = rc.cil, cil_protocol(rc.benchmark, rc.protocol)
    curated = tuple((w, n) for w, n in proto["tinyimagenet_names"]["classes"]) if c.dataset == "tinyimagenet" else ()
    pool = tuple(proto["pool"]) if rc.benchmark == "mini" else CIL_SOURCES.get(c.dataset, ())
    if not pool:
        raise ConfigError(f"config key 'cil.dataset': no prepared dataset to build a {c.dataset} view from")
    return CILPrepareSpec(rc.benchmark, c.dataset, curated, pool)


def cil_step_spec(rc: RunConfig, step: int) -> CILStepSpec:
    c = rc.cil
    if not 0 <= step < c.num_steps:
        raise ConfigError(f"run {rc.run_name} has steps 0..{c.num_steps - 1}, not {step}")
    return CILStepSpec(
        step=step,
        dataset=c.dataset,
        classes=tuple(c.step_classes(step)),
        class_order=c.class_order,
        num_tasks=1,
        model=cil_model(rc),
        prompt_template=c.prompt_template,
        lr=c.lr,
        batch_size=c.batch_size,
        epochs=c.epochs,
        warmup=c.warmup,
        weight_decay=c.weight_decay,
        label_smoothing=c.label_smoothing,
        seed=rc.train.seed,
        image_size=image_size(rc.model.name),
        device=rc.device,
        speed=speed_of(rc),
    )


def cil_evaluate_spec(rc: RunConfig, step: int | None) -> CILEvaluateSpec:
    c = rc.cil
    return CILEvaluateSpec(
        step=step,
        dataset=c.dataset,
        step_classes=tuple(tuple(c.step_classes(s)) for s in range(c.num_steps)),
        class_order=c.class_order,
        num_tasks=1,
        backbone=backbone_of(rc),
        model=cil_model(rc) if step is not None else None,
        prompt_template=c.prompt_template,
        eval_noise=c.eval_noise if step is not None else False,  # zero-shot CLIP has no gates to be noisy
        eval_transform=c.eval_transform,
        batch_size=c.eval_batch_size,
        seed=rc.train.seed,
        image_size=image_size(rc.model.name),
        device=rc.device,
        speed=speed_of(rc),
    )


SPECS = {
    "prepare": PrepareSpec,
    "pretrain": PretrainSpec,
    "backbone": BackboneStepSpec,
    "autoencoder": AutoencoderSpec,
    "task": TaskSpec,
    "features": FeaturesSpec,
    "evaluate": EvaluateSpec,
    "report": ReportSpec,
    "cil_prepare": CILPrepareSpec,
    "cil_step": CILStepSpec,
    "cil_evaluate": CILEvaluateSpec,
}


def to_json(spec) -> str:
    """A spec as the JSON the workflow passes on the command line (sorted keys: its text is its identity)."""
    from ..config import stable_json

    return stable_json(spec)


def from_json(kind: str, text: str):
    """A spec from its JSON (`--spec`): the typed section the step reads, refused if it does not fit."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--spec is not JSON: {e}") from None
    return from_plain(SPECS[kind], data)


def spec_hash(spec) -> str:
    return digest(spec)
