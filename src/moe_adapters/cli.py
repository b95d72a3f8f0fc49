"""`moe-adapters`: one subcommand per workflow step, each runnable by hand.

A step takes its config either as the workflow passes it, `--spec JSON` (the step's slice of the config, exactly
what it reads), or as a person does, `-c CONFIG [--set KEY=VALUE ...] [--run RUN]` plus the step's index
(`--task`, `--index`, `--dataset`); both go through the same typed spec.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError

# ---------------------------------------------------------------- config and specs


def _overrides(args) -> dict:
    import yaml

    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        node = overrides
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return overrides


def _plan(args):
    from .config import deep_merge, read_yaml
    from .workflow.plan import Plan

    raw = read_yaml(args.config) if getattr(args, "config", None) else {}
    return Plan(deep_merge(raw, _overrides(args)))


def _run_name(args, plan) -> str:
    return getattr(args, "run", None) or plan.default_run


def _spec(args, kind: str, index=None):
    """The step's spec: from --spec (the workflow), or built from -c/--set/--run and the step's index (by hand)."""
    from .steps.specs import from_json

    if getattr(args, "spec", None):
        if getattr(args, "config", None) or getattr(args, "set", None):
            raise ConfigError("give either --spec or -c/--set, not both")
        return from_json(kind, args.spec)
    plan = _plan(args)
    return plan.spec(kind, _run_name(args, plan), index)


def _runtime(args, evaluation: bool = False):
    """What changes no number: the command line's values where given, else the config's."""
    from .steps.specs import Runtime, runtime_of

    if getattr(args, "spec", None):
        base = Runtime(num_workers=0, checkpoint_every=0, batched_experts=True, truncate_text=True)
    else:
        plan = _plan(args)
        base = runtime_of(plan.run(_run_name(args, plan)), evaluation)
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return Runtime(
        num_workers=pick(args.workers, base.num_workers),
        checkpoint_every=pick(args.checkpoint_every, base.checkpoint_every),
        batched_experts=bool(pick(args.batched_experts, base.batched_experts)),
        truncate_text=bool(pick(args.truncate_text, base.truncate_text)),
        reuse_features=bool(pick(getattr(args, "reuse_features", None), base.reuse_features)),
    )


def _data_dir(args, dataset: str) -> Path:
    """The prepared folder of `dataset`: --data, else <data_root>/<dataset> of the config."""
    if getattr(args, "data", None):
        return Path(args.data)
    if getattr(args, "spec", None):
        raise ConfigError("with --spec, give the prepared dataset's folder with --data")
    plan = _plan(args)
    return Path(plan.run(_run_name(args, plan)).data_root) / dataset


# ---------------------------------------------------------------- subcommands


def cmd_params(args) -> int:
    import torch

    from .config import load_config
    from .model.clip import BackboneSpec, MoECLIP, create_backbone
    from .model.ddas import Autoencoder, build_feature_extractor, feature_dim
    from .model.moe import MoESpec

    rc = load_config()
    num_routers = len(rc.datasets)
    m = rc.model
    if args.setting == "cil":  # the class-incremental setting: 2 experts, top-2, one shared router (SPEC 8)
        from dataclasses import replace

        m, num_routers = replace(m, num_experts=2, top_k=2), 1
    torch.manual_seed(0)
    backbone = BackboneSpec(args.model, True, None)
    model = MoECLIP(create_backbone(backbone), MoESpec.from_model(m, num_routers), backbone, init_seed=0)
    counts = model.parameter_counts()
    s = model.clip.visual.image_size
    size = args.image_size or int(s[0] if isinstance(s, (tuple, list)) else s)
    ae_dim = feature_dim(build_feature_extractor("alexnet_random"), size)
    out = {
        "total": counts["total"],
        "moe": counts["moe"],
        "expert_vision": counts["expert_vision"],
        "expert_text": counts["expert_text"],
        "router_per_task": counts["router_per_task"],
        "autoencoder": 0 if args.setting == "cil" else sum(p.numel() for p in Autoencoder(ae_dim, rc.ddas.code_dim).parameters()),
        "backbone": counts["backbone"],
        "setting": args.setting,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")
    return 0


def cmd_metrics(args) -> int:
    from .metrics import (
        check_mtil_matrix,
        cil_run_metrics,
        format_metrics,
        mtil_metrics,
        read_cil_csv,
        read_matrix_csv,
    )

    if args.cil:
        acc, R = read_cil_csv(args.matrix)
        m = cil_run_metrics(acc, R)
        if args.json:
            print(json.dumps(m))
        else:
            print(f"{'step':>4} {'accuracy':>8} {'avg':>6} {'forgetting':>10} {'bwt':>6}")
            for r in m["per_step"]:
                print(f"{r['step']:>4} {r['accuracy']:8.2f} {r['avg']:6.2f} {r['forgetting']:10.2f} {r['bwt']:6.2f}")
        return 0

    names, acc = read_matrix_csv(args.matrix)
    check_mtil_matrix(args.matrix, names, acc, order=args.order, benchmark=args.benchmark, protocol=args.protocol)
    m = mtil_metrics(acc, names)
    print(json.dumps(m) if args.json else format_metrics(m))
    return 0


def cmd_check_config(args) -> int:
    from .config import run_config_yaml
    from .fsutil import write_text

    plan = _plan(args)
    rc = plan.run(_run_name(args, plan))
    if args.out:
        write_text(args.out, run_config_yaml(rc))
    else:
        print(run_config_yaml(rc), end="")
    return 0


def cmd_train_task(args) -> int:
    from .steps.train import train_task_step

    spec = _spec(args, "task", args.task)
    prev = args.prev
    train_task_step(spec, _runtime(args), _data_dir(args, spec.dataset), args.out, prev, not args.no_progress)
    return 0


def cmd_train_autoencoder(args) -> int:
    from .steps.ddas import train_autoencoder_step

    spec = _spec(args, "autoencoder", args.index)
    train_autoencoder_step(spec, _runtime(args), _data_dir(args, spec.dataset), args.out, not args.no_progress)
    return 0


def cmd_features(args) -> int:
    from .steps.evaluate import features_step

    spec = _spec(args, "features", args.dataset)
    features_step(spec, _runtime(args, True), _data_dir(args, spec.dataset), args.autoencoders, args.out)
    return 0


def cmd_evaluate(args) -> int:
    from .artifacts import read_metadata
    from .steps.evaluate import evaluate_step

    task = args.task
    if task is None and args.checkpoint and not args.spec:
        task = read_metadata(args.checkpoint).get("task")  # by hand: the checkpoint says which task it is
    spec = _spec(args, "evaluate", task)
    if args.features and args.features_dir:
        raise ConfigError("give --features FILE... or --features-dir DIR, not both")
    if args.features:
        if len(args.features) != len(spec.datasets):
            raise ConfigError(f"--features: {len(args.features)} files for the {len(spec.datasets)} datasets {list(spec.datasets)}")
        feats = dict(zip(spec.datasets, args.features, strict=True))
    elif args.features_dir:
        feats = {d: Path(args.features_dir) / f"{d}.safetensors" for d in spec.datasets}
    else:
        raise ConfigError("give the test sets' features: --features FILE... (in order) or --features-dir DIR")
    data_root = args.data_root or (None if args.spec else _plan(args).config.data_root)
    if data_root is None:
        raise ConfigError("with --spec, give --data-root")
    previous = args.previous[0] if args.previous else None
    evaluate_step(spec, _runtime(args, True), data_root, feats, args.out, args.checkpoint, previous)
    if args.print:
        from .integrity import read_evaluation

        for name, r in read_evaluation(args.out)["results"].items():
            print(f"{name:<16} {r['accuracy']:6.2f}%  batches per route: {r['batch_routes']}")
    return 0


def cmd_prepare_cil(args) -> int:
    from .steps.cil import cil_prepare_step

    spec = _spec(args, "cil_prepare")
    cil_prepare_step(spec, args.prepared, args.out, workers=_runtime(args, True).num_workers)
    return 0


def cmd_train_step(args) -> int:
    from .steps.cil import cil_train_step

    spec = _spec(args, "cil_step", args.step)
    cil_train_step(spec, _runtime(args), args.view, args.out, args.prev, not args.no_progress)
    return 0


def cmd_evaluate_step(args) -> int:
    from .steps.cil import cil_evaluate_step

    spec = _spec(args, "cil_evaluate", args.step)
    cil_evaluate_step(spec, _runtime(args, True), args.view, args.out, args.checkpoint)
    return 0


def cmd_cil_matrix(args) -> int:
    from .reporting.steps import cil_matrix_step

    cil_matrix_step(_spec(args, "report"), args.evals, args.out)
    return 0


def cmd_cil_table(args) -> int:
    from .reporting.steps import cil_table_step
    from .reporting.tables import format_table

    cil_table_step(_spec(args, "report"), args.accuracy, args.zero_shot, args.out, args.markdown, args.costs, args.metrics_json)
    if args.print:
        print(format_table(args.out))
    return 0


def cmd_cil_figure(args) -> int:
    from .reporting.steps import cil_figure_step

    cil_figure_step(_spec(args, "report"), args.accuracy, args.zero_shot, args.out)
    return 0


def _check_all(plan, args, names, check_all) -> int:
    """prepare --check-all: the pretrained weights the run reads (backbone, AlexNet), then the datasets; whatever
    is missing of either, in one message."""
    from .data.prepared import DataMissingError
    from .model.weights import MissingRunWeightsError, check_weights

    found, missing = check_weights(plan.run(_run_name(args, plan)))
    weights_msg = ""
    if missing:
        weights_msg = (
            f"{len(missing)} of {len(found) + len(missing)} pretrained weights files are missing:\n"
            + "\n".join(missing) + "\nWhere the weights go and how to get them: README, section Backbone weights."
        )
    try:
        status = check_all(args.data_root or plan.config.data_root, names)
    except DataMissingError as e:
        raise DataMissingError("\n".join(filter(None, (weights_msg, str(e))))) from None
    if missing:
        raise MissingRunWeightsError(weights_msg)
    for what, path in found.items():
        print(f"{what}: {path}")
    for name, state in status.items():
        print(f"{name:<14} {state}")
    return 0


def cmd_prepare(args) -> int:
    from .steps.data import prepare_step

    if args.download:
        os.environ["MOE_ADAPTERS_DOWNLOAD"] = "1"
    if args.check_all:
        from .data.mtil import check_all

        plan = _plan(args)
        if plan.config.benchmark != "mtil":
            raise ConfigError("--check-all checks the paper's raw data (benchmark: mtil)")
        names = [args.dataset] if args.dataset else None
        if args.run and not args.dataset:  # what this run's jobs read: its datasets, and the generic data it trains on
            rc = plan.run(args.run)
            names = [*rc.datasets, *([] if plan.imported(args.run) else [rc.ddas.generic_dataset])]
        return _check_all(plan, args, names, check_all)
    if not args.dataset and not args.spec:
        raise ConfigError("prepare needs --dataset (or --check-all)")
    spec = _spec(args, "prepare", args.dataset)
    data_root = args.data_root or (None if args.spec else _plan(args).config.data_root)
    if data_root is None:
        raise ConfigError("with --spec, give --data-root")
    out = args.out or Path(data_root) / spec.dataset
    prepare_step(spec, out, data_root=data_root, workers=_runtime(args, True).num_workers)
    return 0


def cmd_pretrain(args) -> int:
    from .steps.data import pretrain_step

    spec = _spec(args, "pretrain")
    pretrain_step(spec, _data_dir(args, spec.dataset) if not args.pool else args.pool, args.out, not args.no_progress)
    return 0


def cmd_backbone(args) -> int:
    from .steps.data import backbone_step

    backbone_step(_spec(args, "backbone"), args.out)
    return 0


def cmd_matrix(args) -> int:
    from .reporting.steps import matrix_step

    matrix_step(_spec(args, "report"), args.evals, args.out, args.routing)
    return 0


def cmd_table(args) -> int:
    from .reporting.steps import table_step
    from .reporting.tables import format_table

    table_step(_spec(args, "report"), args.matrix, args.zero_shot, args.out, args.markdown, args.costs, args.metrics_json)
    if args.print:
        print(format_table(args.out))
    return 0


def cmd_costs(args) -> int:
    from .reporting.steps import costs_step

    costs_step(
        args.out,
        backbone=args.backbone,
        pretrained=args.pretrained,
        checkpoints=args.checkpoints,
        autoencoders=args.autoencoders,
        features=args.features,
        evaluations=args.evaluations,
    )
    return 0


def cmd_figures(args) -> int:
    from .reporting.steps import figures_step

    figures_step(
        _spec(args, "report"),
        args.matrix,
        args.zero_shot,
        args.routing,
        matrix_figure=args.matrix_figure,
        curves_figure=args.curves_figure,
        routing_figure=args.routing_figure,
    )
    return 0


def cmd_expert_figure(args) -> int:
    from .reporting.steps import expert_figure_step

    expert_figure_step(_spec(args, "report"), args.checkpoint, args.out)
    return 0


def cmd_ledger(args) -> int:
    from .reporting.steps import ledger_step

    ledger_step(args.metrics, args.out, args.csv, args.rst)
    if args.print:
        print(Path(args.out).read_text())
    return 0


def cmd_ablation(args) -> int:
    from .reporting.steps import ablation_step

    ablation_step(args.baseline, args.variants, args.out, args.markdown, title_=args.title, summary=args.summary)
    return 0


def cmd_pull(args) -> int:
    from .workflow.dvcpull import PullError, pull

    try:
        pull(args.stage, args.repo, args.allow_missing)
    except PullError as e:
        print(f"moe-adapters pull: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_import_reference(args) -> int:
    from .config import IMPORTED_VARIANT
    from .reference import import_reference

    plan = _plan(args)
    import_reference(plan.run(f"{args.setting}-{IMPORTED_VARIANT}"), args.paths)
    return 0


def cmd_show(args) -> int:
    from .reporting.tables import format_table

    for path in args.tables:
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"{p} is a directory, not a table (a CSV or Markdown file)")
        if not p.read_text().strip():
            raise ValueError(f"{p} is empty")
        text = p.read_text() if p.suffix == ".md" else format_table(p)
        print(f"{path}\n{text}\n")
    return 0


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-adapters", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, spec: bool = True):
        sp.add_argument("--config", "-c", help="run config YAML (default: all defaults, the paper)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.iterations=10")
        sp.add_argument("--run", help="run name, e.g. mtil_order2 or mini_order1-thr0.03 (default: the config's own)")
        if spec:
            sp.add_argument("--spec", help="the step's config slice as JSON (what the workflow passes)")

    def with_runtime(sp):
        g = sp.add_argument_group("settings that change no number (default: the config's)")
        g.add_argument("--workers", type=int, help="data loader workers")
        g.add_argument("--checkpoint-every", type=int, help="steps between resume states (0 = never)")
        g.add_argument("--batched-experts", type=int, choices=[0, 1], help="1: batched experts, 0: per-expert dispatch")
        g.add_argument("--truncate-text", type=int, choices=[0, 1], help="1: cut text after the longest prompt")

    sp = sub.add_parser("params", help="parameter counts of a randomly initialised model")
    sp.add_argument("--model", default="ViT-B-16")
    sp.add_argument("--setting", choices=["mtil", "cil"], default="mtil")
    sp.add_argument("--image-size", type=int, default=None, help="autoencoder input resolution (default: the model's)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_params)

    sp = sub.add_parser("metrics", help="Transfer / Avg / Last from an accuracy matrix CSV")
    sp.add_argument("matrix")
    sp.add_argument("--order", help="the order the header must be (order1, order2; default: the order it is)")
    sp.add_argument("--benchmark", choices=["mtil", "mini"], help="the protocol of the order (default: either)")
    sp.add_argument("--protocol", help="a protocol file of your own (the config's `protocol`) whose orders to match")
    sp.add_argument("--cil", action="store_true", help="a class-incremental ACC.csv: step,accuracy,task_0,...")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_metrics)

    sp = sub.add_parser("check-config", help="validate a config and print a run's config with every value resolved")
    with_config(sp, spec=False)
    sp.add_argument("--out", help="write it to this file instead of printing it")
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("train-task", help="train one task of the order from the previous task's checkpoint")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--task", type=int, help="index in the order (0-based); with --spec, the spec's")
    sp.add_argument("--data", help="the task's prepared dataset folder (default: <data_root>/<dataset>)")
    sp.add_argument("--prev", help="checkpoint of the previous task (none for task 0)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train_task)

    sp = sub.add_parser("train-autoencoder", help="train DDAS autoencoder K (0: generic data, K: task K-1)")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--index", type=int)
    sp.add_argument("--data", help="the prepared dataset folder (default: <data_root>/<dataset>)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train_autoencoder)

    sp = sub.add_parser("features", help="zero-shot features and autoencoder errors of one test set")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--dataset")
    sp.add_argument("--data", help="the prepared dataset folder (default: <data_root>/<dataset>)")
    sp.add_argument("--autoencoders", nargs="+", required=True, help="autoencoders 0..T in index order")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("evaluate", help="evaluate a task checkpoint (or zero-shot CLIP) with DDAS routing")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--task", type=int, help="the checkpoint's task (omit for zero-shot CLIP)")
    sp.add_argument("--checkpoint", help="task checkpoint; omit for zero-shot CLIP")
    sp.add_argument("--features", nargs="+", help="features files of the order's datasets, in order")
    sp.add_argument("--features-dir", help="or: folder of <dataset>.safetensors from `features`")
    sp.add_argument("--data-root", help="folder of the prepared datasets (default: the config's data_root)")
    sp.add_argument("--out", required=True)
    sp.add_argument(
        "--previous", nargs="*", help="the previous checkpoint's evaluation JSON: its routed-feature cache is read"
    )
    sp.add_argument(
        "--reuse-features", type=int, choices=[0, 1],
        help="1: reuse provably unchanged routed image features of the previous checkpoint; 0: recompute all",
    )
    sp.add_argument("--print", action="store_true", help="print accuracies and routes")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("prepare", help="prepare one dataset (mini: build it; paper: fetch, verify, split, cache)")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--dataset", help="dataset to prepare (with --check-all: only check this one)")
    sp.add_argument("--data-root", help="where raw and prepared data live (default: the config's data_root)")
    sp.add_argument("--out", help="prepared folder (default: <data_root>/<dataset>)")
    sp.add_argument(
        "--check-all",
        action="store_true",
        help="check the raw data of every paper dataset at once (no network; with --run, those the run reads); one "
        "message lists all that is missing",
    )
    sp.add_argument(
        "--download",
        action="store_true",
        help="paper datasets: download what torchvision can fetch (needs network; HF_HUB_OFFLINE must not be 1)",
    )
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("prepare-cil", help="the class-incremental view of a dataset (names, label order, raw images)")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--prepared", nargs="+", required=True, help="prepared folder(s): CIFAR100/TinyImageNet, or the mini's pool")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_prepare_cil)

    sp = sub.add_parser("train-step", help="train one class-incremental step from the previous step's checkpoint")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--step", type=int, help="the step (0-based); with --spec, the spec's")
    sp.add_argument("--view", required=True, help="the class-incremental view's folder (prepare-cil)")
    sp.add_argument("--prev", help="checkpoint of the previous step (none for step 0)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train_step)

    sp = sub.add_parser("evaluate-step", help="evaluate a class-incremental step on every class seen (or zero-shot CLIP)")
    with_config(sp)
    with_runtime(sp)
    sp.add_argument("--step", type=int, help="the checkpoint's step (omit for zero-shot CLIP after every step)")
    sp.add_argument("--checkpoint", help="the step's checkpoint; omit for zero-shot CLIP")
    sp.add_argument("--view", required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_evaluate_step)

    sp = sub.add_parser("cil-matrix", help="ACC.csv of a class-incremental run from its evaluations")
    with_config(sp)
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSONs of steps 0..T-1 in order")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_cil_matrix)

    sp = sub.add_parser("cil-table", help="a class-incremental run's Avg / Last beside zero-shot CLIP and the paper")
    with_config(sp)
    sp.add_argument("--accuracy", required=True, help="the run's ACC.csv")
    sp.add_argument("--zero-shot", required=True, help="zero-shot CLIP's evaluation JSON (every step)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--markdown")
    sp.add_argument("--costs")
    sp.add_argument("--metrics-json")
    sp.add_argument("--print", action="store_true")
    sp.set_defaults(func=cmd_cil_table)

    sp = sub.add_parser("cil-figure", help="accuracy on all seen classes after every step, ours beside zero-shot CLIP")
    with_config(sp)
    sp.add_argument("--accuracy", required=True)
    sp.add_argument("--zero-shot", required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_cil_figure)

    sp = sub.add_parser("pretrain", help="mini benchmark: pretrain the tiny CLIP on the captioned pool")
    with_config(sp)
    sp.add_argument("--pool", help="the pretraining pool's prepared folder (default: <data_root>/Pretrain)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_pretrain)

    sp = sub.add_parser("backbone", help="check the backbone weights are here and record their identity")
    with_config(sp)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_backbone)

    sp = sub.add_parser("matrix", help="accuracy matrix and routing table from per-task evaluations")
    with_config(sp)
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSONs of tasks 0..T-1 in order")
    sp.add_argument("--out", required=True)
    sp.add_argument("--routing", required=True)
    sp.set_defaults(func=cmd_matrix)

    sp = sub.add_parser("table", help="the run's Transfer/Avg/Last table beside zero-shot CLIP and the paper")
    with_config(sp)
    sp.add_argument("--matrix", required=True)
    sp.add_argument("--zero-shot", required=True, help="evaluation JSON of zero-shot CLIP")
    sp.add_argument("--out", required=True, help="the table as CSV")
    sp.add_argument("--markdown", help="also write the table for people (Markdown, with the matrix and cost)")
    sp.add_argument("--costs", help="the run's costs.csv, shown in the Markdown table")
    sp.add_argument("--metrics-json", help="also write metrics.json: means, per dataset, zero-shot CLIP, the paper, provenance")
    sp.add_argument("--print", action="store_true")
    sp.set_defaults(func=cmd_table)

    sp = sub.add_parser("costs", help="collect every step's wall time, peak memory, device and trainable parameters")
    sp.add_argument("--backbone", help="backbone.json of the `backbone` step")
    sp.add_argument("--pretrained", help="mini: the pretrained tiny CLIP (its pretraining time)")
    sp.add_argument("--checkpoints", nargs="*", default=[], help="task checkpoints (training)")
    sp.add_argument("--autoencoders", nargs="*", default=[], help="DDAS autoencoders")
    sp.add_argument("--features", nargs="*", default=[], help="per-test-set features (evaluation)")
    sp.add_argument("--evaluations", nargs="*", default=[], help="evaluation JSONs, zero-shot included")
    sp.add_argument("--out", required=True, help="costs.csv")
    sp.set_defaults(func=cmd_costs)

    sp = sub.add_parser("figures", help="accuracy matrix heatmap, accuracy per dataset across tasks, DDAS routing")
    with_config(sp)
    sp.add_argument("--matrix", required=True)
    sp.add_argument("--zero-shot", required=True, help="evaluation JSON of zero-shot CLIP")
    sp.add_argument("--routing", required=True, help="the run's routing CSV")
    sp.add_argument("--matrix-figure", required=True, help="PNG: the accuracy matrix")
    sp.add_argument("--curves-figure", required=True, help="PNG: each dataset's accuracy after every task")
    sp.add_argument("--routing-figure", required=True, help="PNG: share of each dataset's batches per route")
    sp.set_defaults(func=cmd_figures)

    sp = sub.add_parser("expert-figure", help="selection counts of the experts of every layer during one task")
    with_config(sp)
    sp.add_argument("--checkpoint", required=True, help="the task's checkpoint")
    sp.add_argument("--out", required=True, help="PNG")
    sp.set_defaults(func=cmd_expert_figure)

    sp = sub.add_parser("ledger", help="REPRODUCIBILITY.md: paper value beside ours for every run listed")
    sp.add_argument("--metrics", nargs="+", required=True, help="the runs' <run>_metrics.json")
    sp.add_argument("--out", required=True, help="the ledger (Markdown)")
    sp.add_argument("--csv", help="also write the ledger as CSV")
    sp.add_argument("--rst", help="also write its headline as reStructuredText (the report's first page)")
    sp.add_argument("--print", action="store_true")
    sp.set_defaults(func=cmd_ledger)

    sp = sub.add_parser("ablation", help="an ablation table: every variant's means beside the baseline's")
    sp.add_argument("--baseline", required=True, help="the baseline's metrics.json")
    sp.add_argument("--variants", nargs="+", required=True, help="the variants' metrics.json")
    sp.add_argument("--out", required=True, help="CSV")
    sp.add_argument("--markdown", required=True)
    sp.add_argument("--title", default="Ablation")
    sp.add_argument("--summary", action="store_true", help="add mean ± std over all the runs (a seed sweep)")
    sp.set_defaults(func=cmd_ablation)

    sp = sub.add_parser("pull", help="dvc pull a stage's outputs, then mark them up to date for Snakemake")
    sp.add_argument("stage", help="a stage of dvc.yaml: mini, mtil_order1, mtil_order2, mtil_order1_5shot")
    sp.add_argument("--repo", default=".", help="the project folder (default: here)")
    sp.add_argument("--allow-missing", action="store_true", help="passed to dvc pull (CI: take what is there)")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser(
        "import-reference",
        help="the authors' released checkpoints (.pth) into results/<setting>-reference/, checked, for evaluation",
        description="Read the authors' released files ({Dataset}.pth and {Dataset}_autochooser.pth: folders, the "
        "files themselves, zip/tar archives or single-file bundles) without executing code, check their key layout "
        "and backbone against the run's, and write task checkpoints and DDAS autoencoders in this project's format "
        "into <results_dir>/<setting>-reference/ (README, 'Released checkpoints').",
    )
    sp.add_argument("--config", "-c", help="run config YAML (default: all defaults, the paper)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    sp.add_argument("--setting", required=True, choices=["mtil_order1", "mtil_order1_5shot"],
                    help="which release: full-shot (full_shot_order1_1000iters) or 5-shot (few_shot_order1_1000iters)")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="folders, .pth files or archives of the release")
    sp.set_defaults(func=cmd_import_reference)

    sp = sub.add_parser("show", help="print result tables (CSV) or Markdown tables (ablation, table)")
    sp.add_argument("tables", nargs="+")
    sp.set_defaults(func=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    from .startup import defer_dynamo

    defer_dynamo()  # a job's imports without torch._dynamo, which only its optimizer (if any) loads
    args = build_parser().parse_args(argv)
    if not getattr(args, "download", False):  # nothing reaches the network unless a download is asked for
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        report_error(args.command, e.args[0] if isinstance(e, KeyError) and e.args else e)
        return 2
    except (RuntimeError, OSError) as e:  # OSError: a full disk (fsutil.DiskFullError) among others
        report_error(args.command, e)
        return 1


def report_error(command: str, msg) -> None:
    """One line on stderr, and on the error descriptor Snakemake's jobs pass (MOE_ADAPTERS_ERROR_FD): a job's
    stderr is its log, which may be what could not be written (a full disk), and the terminal shows the line."""
    line = f"moe-adapters {command}: error: {msg}\n"
    fd = os.environ.get("MOE_ADAPTERS_ERROR_FD")
    if fd and fd.isdigit():
        try:
            same = os.path.samestat(os.fstat(int(fd)), os.fstat(2))
        except OSError:
            same = False
        try:
            if not same:
                os.write(int(fd), line.encode())
        except OSError:
            pass
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except OSError:  # the log itself is on the full disk
        pass


if __name__ == "__main__":
    sys.exit(main())
