"""Run configuration: YAML validated against a JSON schema (with defaults filled) before any work starts."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .protocol import learning_rate, load_protocol, order_datasets

SCHEMA_PATH = Path(str(resources.files("moe_adapters") / "schemas" / "config.schema.yaml"))


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(schema: dict, obj: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if isinstance(obj.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(sub, obj[key])


def _where(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        return path or "(top level)"
    return path or "(top level)"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate_config(cfg: dict) -> dict:
    """Fill defaults and validate; raises ConfigError naming the offending key. Returns the full config."""
    if not isinstance(cfg, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    schema = load_schema()
    cfg = copy.deepcopy(cfg)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path)
    )
    if errors:
        e = errors[0]
        raise ConfigError(f"config key '{_where(e)}': {e.message}")
    _fill_defaults(schema, cfg)
    _semantic_checks(cfg)
    return cfg


def _semantic_checks(cfg: dict) -> None:
    try:
        proto = load_protocol(cfg["benchmark"], cfg["protocol"])
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config key 'protocol': {e}") from None
    if cfg["order"] not in proto["orders"]:
        raise ConfigError(
            f"config key 'order': {cfg['order']!r} is not an order of the {cfg['benchmark']} protocol "
            f"(known: {', '.join(proto['orders'])})"
        )
    names = order_datasets(proto, cfg["order"])
    for ds in cfg["train"]["lr"]:
        if ds not in proto["datasets"]:
            raise ConfigError(f"config key 'train.lr.{ds}': no such dataset in the protocol")
    for ds in names:
        if ds not in cfg["train"]["lr"]:
            try:
                learning_rate(proto, ds, cfg["shots"])
            except KeyError as e:
                raise ConfigError(f"config key 'shots': {e.args[0]}; set train.lr.{ds}") from None
    m = cfg["model"]
    if m["top_k"] > m["num_experts"]:
        raise ConfigError(
            f"config key 'model.top_k': {m['top_k']} exceeds model.num_experts={m['num_experts']}"
        )


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Read a YAML config (or start empty), merge overrides, fill defaults and validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if overrides:
        raw = deep_merge(raw, overrides)
    return validate_config(raw)


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


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


# ---------------------------------------------------------------- derived values


def iterations(cfg: dict) -> int:
    it = cfg["train"]["iterations"]
    return it if it is not None else (1000 if cfg["shots"] == 0 else 500)


def ddas_threshold(cfg: dict) -> float:
    t = cfg["ddas"]["threshold"]
    return t if t is not None else (0.0655 if cfg["shots"] == 0 else 0.06)


def ddas_lr(cfg: dict) -> float:
    lr = cfg["ddas"]["lr"]
    return lr if lr is not None else (0.01 if cfg["shots"] == 0 else 0.003)


def task_lr(cfg: dict, dataset: str) -> float:
    if dataset in cfg["train"]["lr"]:
        return float(cfg["train"]["lr"][dataset])
    return learning_rate(load_protocol(cfg["benchmark"], cfg["protocol"]), dataset, cfg["shots"])


def deviations(cfg: dict) -> dict[str, Any]:
    """Every setting that departs from the reference implementation, to be recorded with the results."""
    out: dict[str, Any] = {}
    if cfg["ddas"]["only_trained"]:
        out["ddas.only_trained"] = True
    if cfg["ddas"]["per_sample"]:
        out["ddas.per_sample"] = True
    if not cfg["ddas"]["enabled"]:
        out["ddas.enabled"] = False
    if cfg["train"]["freeze_top"] != 2:
        out["train.freeze_top"] = cfg["train"]["freeze_top"]
    for k in ("tf32", "bf16_autocast", "compile"):
        if cfg["speed"][k]:
            out[f"speed.{k}"] = True
    return out
