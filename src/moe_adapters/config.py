"""The run configuration: YAML validated by a JSON schema, then resolved once into a frozen, typed RunConfig.

Where each value comes from, lowest first: the schema's defaults (the paper's MTIL values, the reference's
behaviour), the benchmark's packaged defaults (`configs/<benchmark>.yaml`, e.g. the mini benchmark's tiny
model), the user's YAML file, overrides (`--set`, Snakemake's `--config`). Every `null` that stands for a
derived value (iterations, DDAS threshold and learning rate, per-task learning rates, the protocol) is
resolved here, in `_resolve`, and nowhere else; the dataclasses below have no defaults of their own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .protocol import SAFE_LOADER, generic_datasets, learning_rate, load_protocol, order_datasets

SCHEMA_PATH = Path(str(resources.files("moe_adapters") / "schemas" / "config.schema.yaml"))
BENCHMARK_DEFAULTS = Path(str(resources.files("moe_adapters") / "configs"))

# Keys that change no number: where files live, how many loader workers, how often a resume state is written
# (resuming is bit-exact), and the speed-ups that tests show to be exact. They enter no hash and no deviation.
NON_SEMANTIC = frozenset(
    {
        "data_root",
        "results_dir",
        "train.num_workers",
        "train.checkpoint_every",
        "eval.num_workers",
        "speed.batched_experts",
        "speed.truncate_text",
        "speed.reuse_features",
    }
)
# Keys that name a run rather than configure it (the run's name carries them) or only shape reports.
SELECTORS = frozenset(
    {"benchmark", "order", "shots", "variant", "variants", "setting_kind", "cil.dataset", "cil.steps", "extra_runs"}
)
# What a class-incremental run reads of the config: the backbone and the adapter's shape, the seed, the cil
# section; what an MTIL run reads: everything but the cil section.
CIL_READS = ("protocol", "device", "model.name", "model.quick_gelu", "model.pretrained", "model.bottleneck",
             "model.expert_dropout", "model.expert_scale", "model.noise_epsilon", "train.seed", "cil.", "speed.",
             "report.", "mini.")
# Named thresholds of the reference's scripts (SPEC 4-5): the released test script's and the few-shot train script's.
NAMED_THRESHOLDS = {"test_script": {0: 0.0655, 5: 0.06}, "train_script": {0: 0.0655, 5: 0.0585}}


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


VARIANT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.]*"
# The run of a setting whose checkpoints and autoencoders are the authors' released files, imported by
# `moe-adapters import-reference` (e.g. mtil_order1-reference): the workflow evaluates it and trains nothing.
IMPORTED_VARIANT = "reference"
RUN_NAME = re.compile(
    rf"(?P<benchmark>[a-z]+)_(?P<order>order[0-9]+)(?:_(?P<shots>[0-9]+)shot)?(?:-(?P<variant>{VARIANT_NAME}))?"
)
CIL_RUN_NAME = re.compile(rf"cil_(?P<dataset>[a-z0-9]+)_(?P<steps>[0-9]+)steps(?:-(?P<variant>{VARIANT_NAME}))?")


def parse_run_name(name: str) -> tuple[str, str, int, str | None]:
    """(benchmark, order, shots, variant) of a run name such as mtil_order1_5shot or mini_order1-experts8."""
    m = RUN_NAME.fullmatch(name)
    if not m:
        raise ConfigError(f"{name!r} is not a run name <benchmark>_<order>[_<k>shot][-<variant>]")
    return m["benchmark"], m["order"], int(m["shots"] or 0), m["variant"]


def parse_cil_run_name(name: str) -> tuple[str, int, str | None] | None:
    """(dataset, steps, variant) of a class-incremental run name such as cil_cifar100_10steps; None otherwise."""
    m = CIL_RUN_NAME.fullmatch(name)
    return (m["dataset"], int(m["steps"]), m["variant"]) if m else None


# ---------------------------------------------------------------- typed sections


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and the shape of the MoE adapters (SPEC 1-2)."""

    name: str
    quick_gelu: bool
    pretrained: str | None
    num_experts: int
    top_k: int
    bottleneck: int
    expert_dropout: float
    expert_scale: float
    noise_epsilon: float


@dataclass(frozen=True)
class TrainConfig:
    """Training of the tasks (SPEC 3-4); `lr` holds the resolved learning rate of every dataset of the order."""

    iterations: int
    batch_size: int
    warmup: int
    weight_decay: float
    beta1: float
    beta2: float
    label_smoothing: float
    seed: int
    lr: Mapping[str, float]
    lr_rule: str
    freeze_top: int
    checkpoint_every: int
    num_workers: int


@dataclass(frozen=True)
class DDASConfig:
    """The auto-selector: feature extractor, autoencoders and the routing decision (SPEC 5)."""

    enabled: bool
    feature: str
    feature_weights: str
    pixel_size: int
    code_dim: int
    threshold: float
    lr: float
    weight_decay: float
    batch_size: int
    decay_every_epochs: int
    iterations_generic: int
    iterations: int
    generic_dataset: str
    few_shot_autoencoders: bool
    only_trained: bool
    per_sample: bool


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    num_workers: int


@dataclass(frozen=True)
class SpeedConfig:
    batched_experts: bool
    truncate_text: bool
    reuse_features: bool
    tf32: bool
    bf16_autocast: bool
    compile: bool


@dataclass(frozen=True)
class MiniConfig:
    pretrain_iterations: int
    pretrain_lr: float
    pretrain_batch_size: int
    pretrain_seed: int


@dataclass(frozen=True)
class CILConfig:
    """The class-incremental setting of a run (SPEC 8), resolved from the protocol setting it names."""

    dataset: str
    steps: int
    protocol_setting: str
    initial_increment: int
    increment: int
    class_order: tuple[int, ...]
    prompt_template: str
    num_experts: int
    top_k: int
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    label_smoothing: float
    warmup: int
    eval_batch_size: int
    eval_noise: bool
    eval_transform: str

    @property
    def num_steps(self) -> int:
        """Every step, the base step included (TinyImageNet 100 + 5 steps: 6)."""
        return 1 + (len(self.class_order) - self.initial_increment) // self.increment

    def step_classes(self, step: int) -> list[int]:
        """The (remapped) labels learnt at `step`: a contiguous block of the class order's positions."""
        lo = 0 if step == 0 else self.initial_increment + (step - 1) * self.increment
        hi = self.initial_increment + step * self.increment
        return list(range(lo, min(hi, len(self.class_order))))


@dataclass(frozen=True)
class ReportConfig:
    figure_dpi: int
    expert_color_scale: str
    ledger_runs: tuple[str, ...]


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is: which benchmark, order and shots, where its files live, and every setting, resolved."""

    benchmark: str
    protocol: str
    setting_kind: str
    order: str
    shots: int
    variant: str | None
    data_root: str
    results_dir: str
    device: str
    model: ModelConfig
    train: TrainConfig
    ddas: DDASConfig
    eval: EvalConfig
    speed: SpeedConfig
    mini: MiniConfig
    report: ReportConfig
    variants: Mapping[str, Any]
    cil: CILConfig | None

    @property
    def datasets(self) -> list[str]:
        """The order's datasets, in training order (a class-incremental run: its one dataset)."""
        if self.cil is not None:
            return [self.cil.dataset]
        return order_datasets(self.protocol_data, self.order)

    @property
    def protocol_data(self) -> dict:
        return load_protocol(self.benchmark, None if self.protocol == self.benchmark else self.protocol)

    @property
    def setting(self) -> str:
        """The published setting this run belongs to: mtil_order1, mtil_order1_5shot, mini_order2, cil_cifar100_10steps"""
        if self.cil is not None:
            return f"cil_{self.cil.dataset}_{self.cil.steps}steps"
        return f"{self.benchmark}_{self.order}" + (f"_{self.shots}shot" if self.shots else "")

    @property
    def run_name(self) -> str:
        """The setting, and the variant after a dash: mini_order1, mini_order1-experts8."""
        return self.setting + (f"-{self.variant}" if self.variant else "")

    def to_dict(self) -> dict:
        return to_plain(self)


# ---------------------------------------------------------------- (de)serialising typed sections


def to_plain(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON-able data, mappings with sorted keys, tuples as lists."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def stable_json(obj: Any) -> str:
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"))


def digest(obj: Any) -> str:
    """The 16-hex-digit identity of a value (a config, a step's slice), independent of key order."""
    return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:16]


def from_plain(cls, data: Mapping[str, Any]):
    """Rebuild a (nested, frozen) dataclass from to_plain's output; unknown or missing fields are refused."""
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    extra, missing = set(data) - names, names - set(data)
    if extra or missing:
        raise ConfigError(f"{cls.__name__}: unexpected keys {sorted(extra)}, missing keys {sorted(missing)}")
    kw = {}
    for f in fields(cls):
        v, t = data[f.name], hints[f.name]
        options = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
        for option in options:
            if isinstance(option, type) and is_dataclass(option) and isinstance(v, Mapping):
                v = from_plain(option, v)
                break
            if typing.get_origin(option) is tuple and isinstance(v, list):
                v = tuple(v)
                break
        kw[f.name] = v
    return cls(**kw)


# ---------------------------------------------------------------- loading and validation


@cache
def load_schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=SAFE_LOADER)


@cache
def benchmark_defaults(benchmark: str) -> dict:
    """The packaged defaults of a benchmark (empty for the paper's: the schema's defaults are the paper); read once
    a process, and never to be changed in place (deep_merge copies it)."""
    p = BENCHMARK_DEFAULTS / f"{benchmark}.yaml"
    return yaml.load(p.read_text(), Loader=SAFE_LOADER) or {} if p.is_file() else {}


def deep_merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _fill_defaults(schema: dict, obj: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if isinstance(obj.get(key), dict) and "properties" in sub:
            _fill_defaults(sub, obj[key])


def _types(sub: dict) -> list[str]:
    t = sub.get("type", [])
    out = [t] if isinstance(t, str) else list(t)
    for alt in sub.get("anyOf", []):
        out += _types(alt)
    return out


def _coerce(schema: dict, obj: Any) -> Any:
    """Typed values from text: Snakemake hands nested `--config` values over as strings ('0.0', 'true')."""
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in obj.items():
            sub = props.get(k, extra if isinstance(extra, dict) else {})
            out[k] = _coerce(sub, v)
        return out
    if isinstance(obj, str) and set(_types(schema)) & {"number", "integer", "boolean", "null"}:
        try:
            v = yaml.safe_load(obj)
        except yaml.YAMLError:
            return obj
        ok = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),)}
        for t in _types(schema):
            if t in ok and isinstance(v, ok[t]) and not (t != "boolean" and isinstance(v, bool)):
                return v
    return obj


def _expand_dotted(raw: Mapping) -> dict:
    """`{"model.top_k": 1}` as `{"model": {"top_k": 1}}` (keys with dots are how --set names nested keys)."""
    out: dict = {}
    for k, v in raw.items():
        v = _expand_dotted(v) if isinstance(v, Mapping) and k != "variants" else v
        parts = str(k).split(".") if k not in ("variants",) else [k]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{k}': '{p}' is not a section")
        node[parts[-1]] = deep_merge(node[parts[-1]], v) if isinstance(v, dict) and isinstance(node.get(parts[-1]), dict) else v
    return out


def _where(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            return ".".join([*map(str, err.absolute_path), extra[0]])
    return path or "(top level)"


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"no such key (allowed here: {', '.join(allowed)})"
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {err.validator_value}"
    return err.message


def validate_raw(raw: Mapping) -> dict:
    """Coerce, validate against the schema (naming the first bad key) and fill the schema's defaults."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping of keys to values")
    schema = load_schema()
    cfg = _coerce(schema, _expand_dotted(raw))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise ConfigError(f"config key '{_where(e)}': {_message(e)}")
    _fill_defaults(schema, cfg)
    return cfg


def merged_raw(raw: Mapping | None = None) -> dict:
    """The benchmark's packaged defaults with the user's values on top (before the schema's defaults)."""
    raw = _expand_dotted(raw or {})
    bench = raw.get("benchmark", load_schema()["properties"]["benchmark"]["default"])
    return deep_merge(benchmark_defaults(str(bench)), raw)


def resolve(raw: Mapping | None = None) -> RunConfig:
    """The typed run configuration of a raw config mapping: validated, every derived value resolved."""
    return _resolve(validate_raw(merged_raw(raw)))


def _protocol(cfg: dict) -> tuple[str, dict]:
    name = cfg["protocol"] if cfg["protocol"] is not None else cfg["benchmark"]
    try:
        proto = load_protocol(cfg["benchmark"], None if name == cfg["benchmark"] else name)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config key 'protocol': {e}") from None
    return name, proto


def _resolve(cfg: dict) -> RunConfig:
    name, proto = _protocol(cfg)
    if cfg["order"] not in proto["orders"]:
        raise ConfigError(
            f"config key 'order': {cfg['order']!r} is not an order of the {cfg['benchmark']} protocol "
            f"(known: {', '.join(proto['orders'])})"
        )
    shots = cfg["shots"]
    names = order_datasets(proto, cfg["order"])
    t, d, m = cfg["train"], cfg["ddas"], cfg["model"]
    for ds in t["lr"]:
        if ds not in proto["datasets"]:
            raise ConfigError(f"config key 'train.lr.{ds}': no such dataset in the {name} protocol")
    lrs = {}
    first_order = order_datasets(proto, next(iter(proto["orders"])))
    for pos, ds in enumerate(names):
        if ds in t["lr"]:
            lrs[ds] = float(t["lr"][ds])
            continue
        # per_dataset: each dataset keeps its own rate (our documented Order II default); by_position: the task
        # at position k takes the rate the reference's Order I script gives position k
        source = ds if t["lr_rule"] == "per_dataset" or pos >= len(first_order) else first_order[pos]
        try:
            lrs[ds] = learning_rate(proto, source, shots)
        except KeyError as e:
            raise ConfigError(f"config key 'shots': {e.args[0]}; set train.lr.{ds}") from None
    if m["top_k"] > m["num_experts"]:
        raise ConfigError(f"config key 'model.top_k': {m['top_k']} exceeds model.num_experts={m['num_experts']}")
    if t["freeze_top"] > m["num_experts"]:
        raise ConfigError(f"config key 'train.freeze_top': {t['freeze_top']} exceeds model.num_experts={m['num_experts']}")
    known = list(dict.fromkeys([*generic_datasets(cfg["benchmark"], proto), *proto["datasets"]]))
    if d["generic_dataset"] not in known:
        known = ", ".join(known)
        raise ConfigError(f"config key 'ddas.generic_dataset': {d['generic_dataset']!r} is not a dataset of the {name} protocol (known: {known})")
    threshold = d["threshold"]
    if threshold is None or isinstance(threshold, str):
        named = "test_script" if threshold is None else threshold
        if shots not in NAMED_THRESHOLDS[named]:
            raise ConfigError(f"config key 'ddas.threshold': the reference's {named} has no threshold for {shots}-shot; give a number")
        threshold = NAMED_THRESHOLDS[named][shots]
    few = shots > 0
    for key, sub in cfg["variants"].items():
        if not isinstance(sub, Mapping):
            raise ConfigError(f"config key 'variants.{key}': a variant is a mapping of config overrides")
        if key == IMPORTED_VARIANT:
            raise ConfigError(
                f"config key 'variants.{key}': the variant name {key!r} is reserved for the authors' released "
                "checkpoints (moe-adapters import-reference); choose another name"
            )
    cil = _resolve_cil(cfg) if cfg["setting"] == "cil" else None
    for r in cfg["extra_runs"]:
        if not (RUN_NAME.fullmatch(r) or CIL_RUN_NAME.fullmatch(r)):
            raise ConfigError(f"config key 'extra_runs': {r!r} is not a run name (<benchmark>_<order>..., cil_<dataset>_<N>steps)")
    return RunConfig(
        benchmark=cfg["benchmark"],
        protocol=name,
        setting_kind=cfg["setting"],
        order=cfg["order"],
        shots=shots,
        variant=cfg["variant"],
        data_root=cfg["data_root"],
        results_dir=cfg["results_dir"],
        device=cfg["device"],
        model=ModelConfig(**m),
        train=TrainConfig(
            **{**t, "lr": lrs, "iterations": t["iterations"] if t["iterations"] is not None else (500 if few else 1000)}
        ),
        ddas=DDASConfig(
            **{
                **d,
                "threshold": float(threshold),
                "lr": float(d["lr"]) if d["lr"] is not None else (0.003 if few else 0.01),
                "few_shot_autoencoders": d["few_shot_autoencoders"] if d["few_shot_autoencoders"] is not None else few,
            }
        ),
        eval=EvalConfig(**cfg["eval"]),
        speed=SpeedConfig(**cfg["speed"]),
        mini=MiniConfig(**cfg["mini"]),
        report=ReportConfig(**{**cfg["report"], "ledger_runs": tuple(cfg["report"]["ledger_runs"])}),
        variants=copy.deepcopy(cfg["variants"]),
        cil=cil,
    )


def cil_protocol(benchmark: str, protocol: str | None = None) -> dict:
    """The class-incremental protocol: the packaged cil.yaml (the paper), or the mini protocol's cil section."""
    if benchmark == "mini":
        proto = load_protocol("mini", None if protocol in (None, "mini") else protocol)
        if "cil" not in proto:
            raise ConfigError(f"config key 'protocol': {protocol or 'mini'} has no class-incremental (cil) section")
        return proto["cil"]
    from .protocol import _packaged, _read

    return _read(str(_packaged("cil.yaml")))


def cil_steps_of(setting: Mapping, num_classes: int) -> int:
    """A setting's step count as runs name it: the steps after the base step where the base is larger
    (TinyImageNet 100 + 5), else every step (CIFAR100 in 10)."""
    initial, increment = setting["initial_increment"], setting["increment"]
    return (num_classes - initial) // increment + (1 if initial == increment else 0)


def _resolve_cil(cfg: dict) -> CILConfig:
    c = cfg["cil"]
    proto = cil_protocol(cfg["benchmark"], cfg["protocol"])
    order = proto["class_orders"].get(c["dataset"])
    if order is None:
        raise ConfigError(
            f"config key 'cil.dataset': {c['dataset']!r} has no class order in the {cfg['benchmark']} class-incremental "
            f"protocol (known: {', '.join(proto['class_orders'])})"
        )
    found = [
        (key, s) for key, s in proto["settings"].items()
        if s["dataset"] == c["dataset"] and cil_steps_of(s, len(order)) == c["steps"]
    ]
    if not found:
        known = sorted(cil_steps_of(s, len(order)) for s in proto["settings"].values() if s["dataset"] == c["dataset"])
        raise ConfigError(f"config key 'cil.steps': {c['steps']} is not a {c['dataset']} setting (known: {known})")
    key, s = found[0]
    if c["top_k"] > c["num_experts"]:
        raise ConfigError(f"config key 'cil.top_k': {c['top_k']} exceeds cil.num_experts={c['num_experts']}")

    def pick(name, proto_key):
        return c[name] if c[name] is not None else s[proto_key]

    return CILConfig(
        dataset=c["dataset"],
        steps=c["steps"],
        protocol_setting=key,
        initial_increment=s["initial_increment"],
        increment=s["increment"],
        class_order=tuple(order),
        prompt_template=s["prompt_template"],
        num_experts=c["num_experts"],
        top_k=c["top_k"],
        epochs=int(pick("epochs", "epochs_per_step")),
        lr=float(pick("lr", "lr")),
        batch_size=int(pick("batch_size", "batch_size")),
        weight_decay=float(pick("weight_decay", "weight_decay")),
        label_smoothing=float(pick("label_smoothing", "ls")),
        warmup=int(pick("warmup", "warmup_steps")),
        eval_batch_size=c["eval_batch_size"],
        eval_noise=c["eval_noise"],
        eval_transform=c["eval_transform"],
    )


def read_yaml(path: str | Path) -> dict:
    """A YAML config file; a syntax error names the file, line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" if not p.exists() else f"config file {p} is not a file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start and mark and start.line != mark.line:  # where the construct that broke began
            problem += f" ({context} at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"config file {p} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p}: the top level must be a mapping of keys to values")
    return raw


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or start empty), merge overrides, validate and resolve."""
    raw = read_yaml(path) if path is not None else {}
    if overrides:
        raw = deep_merge(_expand_dotted(raw), _expand_dotted(overrides))
    return resolve(raw)


def with_overrides(rc_raw: Mapping, overrides: Mapping) -> dict:
    return deep_merge(_expand_dotted(rc_raw), _expand_dotted(overrides))


# ---------------------------------------------------------------- identity, deviations, provenance


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": {"DTD": 0.001}}} as {"train.lr.DTD": 0.001}; an empty mapping stays a value."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def semantic(rc: RunConfig) -> dict[str, Any]:
    """The run's settings that can change a number: everything it reads but locations, workers, resume cadence and
    exact speed-ups (a class-incremental run reads the cil section, an MTIL run everything else)."""
    flat = {k: v for k, v in flatten(rc.to_dict()).items() if k not in NON_SEMANTIC and k.split(".")[0] != "variants"}
    if rc.cil is not None:
        return {k: v for k, v in flat.items() if k in SELECTORS or k.startswith(CIL_READS)}
    return {k: v for k, v in flat.items() if k != "cil"}


def config_hash(rc: RunConfig) -> str:
    """The run's identity: a digest of its semantic settings (a bit-exact speed switch leaves it unchanged)."""
    return digest(semantic(rc))


def reference_config(rc: RunConfig) -> RunConfig:
    """The reference's settings for the same setting (benchmark, order and shots; or the class-incremental dataset
    and steps): what deviations are measured against. A protocol file of one's own is a deviation of its own; the
    reference's settings are still read with it where they fit it. Resolved once a process per setting (a
    workflow's DAG asks for it once per job; protocol files are read once a process too)."""
    cil = (rc.cil.dataset, rc.cil.steps) if rc.cil is not None else None
    return _reference_config(rc.benchmark, rc.protocol, rc.order, rc.shots, cil, rc.ddas.generic_dataset)


@cache
def _reference_config(benchmark, protocol, order, shots, cil, generic_dataset) -> RunConfig:
    select = {"order": order, "shots": shots}
    if cil is not None:
        select = {"setting": "cil", "cil": {"dataset": cil[0], "steps": cil[1]}}
    try:
        return resolve({"benchmark": benchmark, "protocol": protocol, **select})
    except ConfigError:
        return resolve({"benchmark": benchmark, "protocol": protocol, **select,
                        "ddas": {"generic_dataset": generic_dataset}})


def deviations(rc: RunConfig) -> dict[str, dict[str, Any]]:
    """Every setting whose value differs from the reference's for this setting: {key: {value, reference}}.

    Locations, workers, resume cadence, exact speed-ups, report layout and the run's own selectors are not
    deviations. An empty result means the run is faithful to the reference.
    """
    ref = reference_config(rc)
    mine, theirs = semantic(rc), semantic(ref)
    out = {}
    if rc.protocol != rc.benchmark:
        out["protocol"] = {"value": rc.protocol, "reference": rc.benchmark}
    for key in sorted(set(mine) | set(theirs)):
        if key.split(".")[0] in SELECTORS or key in SELECTORS or key.startswith("report.") or key in ("device", "protocol"):
            continue
        if mine.get(key) != theirs.get(key):
            out[key] = {"value": mine.get(key), "reference": theirs.get(key)}
    return out


def format_deviations(devs: Mapping[str, Mapping[str, Any]]) -> str:
    """One line for people: 'faithful to the reference', or 'key=value (reference: v); ...'."""
    if not devs:
        return "faithful to the reference"
    return "; ".join(f"{k}={_short(v['value'])} (reference: {_short(v['reference'])})" for k, v in devs.items())


def _short(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


@cache
def code_commit() -> str:
    """The git commit of this code (short hash, "-dirty" with uncommitted changes), recorded with every result."""
    here = str(Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit or "unknown"


@cache
def code_fingerprint() -> str:
    """A digest of the package's own source files: what a resume state must have been written by."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".yaml", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_config_yaml(rc: RunConfig) -> str:
    """`<run>/config.yaml`: every value explicit, headed by the hash, the deviations and what each null means."""
    head = [
        f"# validated run config of {rc.run_name}, hash {config_hash(rc)} (every default filled in)",
        f"# deviations: {format_deviations(deviations(rc))}",
        "# nulls left: model.pretrained null = random backbone weights; variant null = the baseline run; "
        "cil null = an MTIL run",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(rc.to_dict(), sort_keys=False)
