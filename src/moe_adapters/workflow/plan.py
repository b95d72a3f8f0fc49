"""What the Snakefile asks of the package: the run configuration of every run name, the spec (config slice) of every
job, where every step's output lives, and which steps a variant shares with its baseline.

A run is named `<setting>[-<variant>]`, the setting being `<benchmark>_<order>[_<k>shot]` (mini_order1,
mtil_order1_5shot) and the variant one of the config's `variants:`, a packaged ablation axis's, or the ad-hoc one of
`--config variant=NAME ...`. A variant's run config is its baseline's with the variant's overrides on top. A step
of a variant is *shared* with the baseline (its output is the baseline's file, computed once) when its spec and the
specs of everything upstream of it are identical; otherwise the variant computes its own, under its own name, and
never writes into the baseline's folder.

The variant `reference` (config.IMPORTED_VARIANT, e.g. mtil_order1-reference) is the run of the authors' released
checkpoints, imported by `moe-adapters import-reference`: its task checkpoints and autoencoders are files no rule
makes, so nothing of it is trained, and it shares no step with the baseline (its own backbone check, features and
evaluations live in its own folder, which is what its DVC stage versions).

Nothing here reads the results folder or writes anything: it is pure computation on the config, so Snakemake can
call it at parse time and in input functions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import (
    IMPORTED_VARIANT,
    ConfigError,
    RunConfig,
    deep_merge,
    digest,
    flatten,
    parse_cil_run_name,
    parse_run_name,
    resolve,
    semantic,
)
from ..steps import specs as S

AXES_FILE = Path(str(resources.files("moe_adapters") / "configs" / "ablations.yaml"))
# A variant changes how a run is trained or evaluated; what names the run or where files live is not its to change.
NOT_IN_VARIANTS = ("benchmark", "order", "shots", "variant", "variants", "data_root", "results_dir", "setting",
                   "cil.dataset", "cil.steps", "extra_runs")


def ablation_axes() -> dict[str, dict[str, dict]]:
    """The paper's ablation axes (packaged configs/ablations.yaml): axis -> {variant name: overrides}."""
    axes = yaml.safe_load(AXES_FILE.read_text())
    return {k: v for k, v in axes.items() if k != "about"}


@dataclass(frozen=True)
class Step:
    """One job of a run: its kind, index (task, autoencoder, dataset), spec and identity key."""

    kind: str
    index: Any
    spec: Any
    key: str


class Plan:
    """Run configs, job specs, step identities and owners, for the configs Snakemake was given.

    `raw` is the config Snakemake merged (config files and --config); `adhoc` is (variant name, overrides) when
    --config named a variant, in which case `baseline_raw` is the config without those overrides.
    """

    def __init__(self, raw: Mapping, baseline_raw: Mapping | None = None, adhoc: tuple[str, Mapping] | None = None):
        self.raw = copy.deepcopy(dict(raw))
        self.adhoc = adhoc
        self.baseline_raw = copy.deepcopy(dict(baseline_raw if baseline_raw is not None else raw))
        self.baseline_raw.pop("variant", None)
        self._runs: dict[str, RunConfig] = {}
        self._keys: dict[tuple, str] = {}
        self.config = self.run(self.default_run)  # validates the config itself, before any job

    # ------------------------------------------------------------ runs
    @cached_property
    def default_run(self) -> str:
        """The run of the config itself: its setting, and the variant --config named."""
        rc = resolve({k: v for k, v in self.baseline_raw.items() if k != "variants"} | {"variants": {}})
        name = rc.setting
        if self.adhoc:
            return f"{name}-{self.adhoc[0]}"
        variant = self.raw.get("variant")
        return f"{name}-{variant}" if variant else name

    def variant_overrides(self, variant: str) -> dict:
        """A variant's overrides: the ad-hoc one's, the config's `variants:`, then the packaged axes'."""
        if variant == IMPORTED_VARIANT:
            if self.adhoc and variant == self.adhoc[0] and self.adhoc[1]:
                raise ConfigError(
                    f"variant {variant!r} is the authors' released checkpoints as imported; it takes no overrides "
                    f"(got {', '.join(sorted(self.adhoc[1]))})"
                )
            return {}
        if self.adhoc and variant == self.adhoc[0]:
            found = self.adhoc[1]
        elif variant in (self.baseline_raw.get("variants") or {}):
            found = self.baseline_raw["variants"][variant]
        else:
            found = next((axis[variant] for axis in ablation_axes().values() if variant in axis), None)
            if found is None and variant == self.raw.get("variant"):
                found = {}  # the config file itself names its run's variant
        if found is None:
            known = sorted({*(self.baseline_raw.get("variants") or {}), *(v for a in ablation_axes().values() for v in a)})
            raise ConfigError(f"no variant {variant!r} (config variants: and packaged axes know: {', '.join(known)})")
        bad = sorted(k for k in {*found, *flatten(found)} if k in NOT_IN_VARIANTS)
        if bad:
            raise ConfigError(
                f"variant {variant!r} sets {', '.join(bad)}: a variant cannot change what names the run or where files "
                "live (ask for another run name, e.g. mtil_order2-<variant>, instead)"
            )
        return copy.deepcopy(dict(found))

    def run(self, name: str) -> RunConfig:
        """The run configuration of a run name, validated and resolved (cached)."""
        if name not in self._runs:
            cil = parse_cil_run_name(name)
            if cil is not None:
                dataset, steps, variant = cil
                raw = deep_merge(self.baseline_raw, {"setting": "cil", "cil": {"dataset": dataset, "steps": steps}})
            else:
                benchmark, order, shots, variant = parse_run_name(name)
                raw = deep_merge(self.baseline_raw, {"setting": "mtil", "order": order, "shots": shots})
                if benchmark != raw.get("benchmark", "mtil"):
                    raise ConfigError(
                        f"run {name}: the config's benchmark is {raw.get('benchmark', 'mtil')}, not {benchmark}"
                    )
            if variant:
                raw = deep_merge(raw, {**self.variant_overrides(variant), "variant": variant})
            try:
                self._runs[name] = resolve(raw)
            except ConfigError as e:
                raise ConfigError(f"run {name}: {e}") from None
        return self._runs[name]

    def baseline(self, name: str) -> str:
        return self.run(name).setting

    @staticmethod
    def imported(name: str) -> bool:
        """Whether a run's checkpoints and autoencoders are the authors' released files (nothing trained)."""
        return parse_run_name(name)[3] == IMPORTED_VARIANT

    def ablation_variants(self, setting: str, axis: str | None) -> list[str]:
        """The variant runs of an ablation table: the config's variants (axis None) or a packaged axis's, leaving out
        any that equal the baseline."""
        names = list((self.baseline_raw.get("variants") or {}) if axis is None else ablation_axes().get(axis, {}))
        if axis is not None and axis not in ablation_axes():
            raise ConfigError(f"no ablation axis {axis!r} (known: {', '.join(ablation_axes())})")
        if not names:
            raise ConfigError("the config has no variants: to compare (add a `variants:` block, or use an axis target)")
        base = semantic(self.run(setting))
        runs = [f"{setting}-{v}" for v in names]
        return [r for r in runs if semantic(self.run(r)) | {"variant": None} != base | {"variant": None}]

    # ------------------------------------------------------------ specs and identities
    def spec(self, kind: str, run: str, index: Any = None):
        rc = self.run(run)
        build = {
            "prepare": lambda: S.prepare_spec(rc, index),
            "pretrain": lambda: S.pretrain_spec(rc),
            "backbone": lambda: S.backbone_spec(rc),
            "autoencoder": lambda: S.autoencoder_spec(rc, int(index)),
            "task": lambda: S.task_spec(rc, int(index)),
            "features": lambda: S.features_spec(rc, index),
            "evaluate": lambda: S.evaluate_spec(rc, None if index is None else int(index)),
            "report": lambda: S.report_spec(rc),
            "cil_prepare": lambda: S.cil_prepare_spec(rc),
            "cil_step": lambda: S.cil_step_spec(rc, int(index)),
            "cil_evaluate": lambda: S.cil_evaluate_spec(rc, None if index is None else int(index)),
        }
        if kind not in build:
            raise KeyError(kind)
        return build[kind]()

    def upstream(self, kind: str, run: str, index: Any = None) -> list[tuple[str, Any]]:
        """The steps whose outputs this step reads."""
        rc = self.run(run)
        if kind == "backbone":
            return [("pretrain", None)] if rc.benchmark == "mini" else []
        if kind == "autoencoder":
            return [("prepare", S.autoencoder_dataset(rc, int(index)))]
        if kind == "task":
            k = int(index)
            return [("prepare", rc.datasets[k]), ("backbone", None)] + ([("task", k - 1)] if k else [])
        if kind == "features":
            return [("prepare", index), ("backbone", None)] + [("autoencoder", k) for k in range(len(rc.datasets) + 1)]
        if kind == "evaluate":
            up = [("features", d) for d in rc.datasets]
            return up if index is None else [("task", int(index)), *up]
        if kind == "cil_step":
            k = int(index)
            return [("cil_prepare", None), ("backbone", None)] + ([("cil_step", k - 1)] if k else [])
        if kind == "cil_evaluate":
            return [("cil_prepare", None), ("backbone", None)] + ([("cil_step", int(index))] if index is not None else [])
        return []

    def key(self, kind: str, run: str, index: Any = None) -> str:
        """A step's identity: its spec and, recursively, its inputs' identities."""
        k = (kind, run, index)
        if k not in self._keys:
            parts = [kind, S.to_json(self.spec(kind, run, index))]
            parts += [self.key(uk, run, ui) for uk, ui in self.upstream(kind, run, index)]
            self._keys[k] = digest(parts)
        return self._keys[k]

    def owner(self, kind: str, run: str, index: Any = None) -> str:
        """The run whose folder holds this step's output: the baseline's when the step is identical there."""
        base = self.baseline(run)
        if base == run or self.imported(run):
            return run
        try:
            same = self.key(kind, base, index) == self.key(kind, run, index)
        except (ConfigError, IndexError):
            same = False
        return base if same else run

    def check_shared_paths(self, run: str) -> None:
        """Prepared data and the mini's pretrained backbone live outside run folders: a variant that would compute
        them differently would overwrite the baseline's. Refuse such a variant, naming what it changes."""
        base = self.baseline(run)
        if base == run:
            return
        rc = self.run(run)
        if rc.cil is not None:
            checks = [("cil_prepare", None)]
        else:
            checks = [("prepare", d) for d in {*rc.datasets, rc.ddas.generic_dataset}]
        if rc.benchmark == "mini":
            checks.append(("pretrain", None))
        for kind, index in checks:
            mine, theirs = self.spec(kind, run, index), self.spec(kind, base, index)
            if mine != theirs:
                raise ConfigError(
                    f"variant run {run}: its {kind} step ({index or 'backbone'}) differs from {base}'s, but both would "
                    f"write the same file; a variant may not change what prepared data or the pretrained backbone are"
                )

    # ------------------------------------------------------------ what the rules pass
    def params(self, kind: str, run: str, index: Any = None) -> str:
        """The job's spec as JSON: its `params`, so Snakemake reruns the job exactly when its spec changes."""
        return S.to_json(self.spec(kind, run, index))

    def cil_view_run(self, dataset: str) -> str:
        """A run of the class-incremental dataset (any of its settings: the view does not depend on the steps)."""
        from ..config import cil_protocol, cil_steps_of

        proto = cil_protocol(self.config.benchmark, self.config.protocol)
        order = proto["class_orders"].get(dataset)
        settings = [s for s in proto["settings"].values() if s["dataset"] == dataset]
        if order is None or not settings:
            raise ConfigError(f"no class-incremental dataset {dataset!r} in the {self.config.benchmark} protocol")
        return f"cil_{dataset}_{cil_steps_of(settings[0], len(order))}steps"

    def extra_runs(self) -> list[str]:
        """Runs the default target builds besides the config's own (the mini: its class-incremental run)."""
        return list(self.config_raw_value("extra_runs") or [])

    def config_raw_value(self, key: str):
        from ..config import merged_raw, validate_raw

        return validate_raw(merged_raw(self.baseline_raw))[key]
