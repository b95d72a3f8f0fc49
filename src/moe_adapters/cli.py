"""`moe-adapters`: one subcommand per workflow step, each runnable by hand."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _config(args) -> dict:
    overrides = {}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        if not _:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        import yaml

        node = overrides
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return load_config(args.config, overrides)


def cmd_params(args) -> int:
    from .ddas import Autoencoder
    from .model import BackboneSpec, MoECLIP, create_backbone
    from .moe import CIL_SPEC, MTIL_SPEC

    spec = MTIL_SPEC if args.setting == "mtil" else CIL_SPEC
    import torch

    torch.manual_seed(0)
    model = MoECLIP(create_backbone(BackboneSpec(args.model, True, None)), spec)
    counts = model.parameter_counts()
    ae_dim = _alexnet_conv5_dim(args.image_size or _image_size_of(model))
    out = {
        "total": counts["total"],
        "moe": counts["moe"],
        "expert_vision": counts["expert_vision"],
        "expert_text": counts["expert_text"],
        "router_per_task": counts["router_per_task"],
        "autoencoder": sum(p.numel() for p in Autoencoder(ae_dim, 100).parameters()),
        "backbone": counts["backbone"],
        "setting": args.setting,
    }
    if args.setting == "cil":
        out["autoencoder"] = 0  # the class-incremental setting has no DDAS
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")
    return 0


def _image_size_of(model) -> int:
    from .factory import image_size

    return image_size(model)


def _alexnet_conv5_dim(size: int) -> int:
    from .ddas import build_feature_extractor, feature_dim

    return feature_dim(build_feature_extractor("alexnet_random"), size)


def cmd_metrics(args) -> int:
    from .metrics import format_metrics, mtil_metrics, read_matrix_csv
    from .protocol import load_protocol, order_datasets

    names, acc = read_matrix_csv(args.matrix)
    if args.order:
        want = order_datasets(load_protocol(args.benchmark), args.order)
        if names != want:
            raise ValueError(
                f"{args.matrix}: header {names} is not the dataset order of {args.order} ({want})"
            )
    if acc.shape[0] != len(names):
        print(f"note: {acc.shape[0]} rows for {len(names)} datasets (an unfinished run?)", file=sys.stderr)
    m = mtil_metrics(acc, names)
    print(json.dumps(m) if args.json else format_metrics(m))
    return 0


def cmd_check_config(args) -> int:
    cfg = _config(args)
    if args.out:
        import yaml

        from .config import config_hash
        from .fsutil import write_text

        header = f"# validated run config, hash {config_hash(cfg)} (every default filled in)\n"
        write_text(args.out, header + yaml.safe_dump(cfg, sort_keys=False))
    else:
        print(json.dumps(cfg, indent=2))
    return 0


def cmd_train_task(args) -> int:
    from .pipeline import train_task_step

    train_task_step(
        _config(args), args.task, args.out, args.prev, args.backbone_weights, not args.no_progress
    )
    return 0


def cmd_train_autoencoder(args) -> int:
    from .pipeline import train_autoencoder_step

    train_autoencoder_step(_config(args), args.index, args.out, not args.no_progress)
    return 0


def cmd_features(args) -> int:
    from .pipeline import features_step

    features_step(_config(args), args.dataset, args.autoencoders, args.out, args.backbone_weights)
    return 0


def cmd_evaluate(args) -> int:
    from .factory import order_names
    from .pipeline import evaluate_step

    cfg = _config(args)
    datasets = args.dataset or order_names(cfg)
    feats = {}
    for d in datasets:
        feats[d] = str(Path(args.features_dir) / f"{d}.safetensors")
    evaluate_step(cfg, args.out, args.checkpoint, feats, datasets, args.backbone_weights)
    if args.print:
        from .fsutil import read_json

        for name, r in read_json(args.out)["results"].items():
            print(f"{name:<16} {r['accuracy']:6.2f}%  batches per route: {r['batch_routes']}")
    return 0


def cmd_matrix(args) -> int:
    from .pipeline import matrix_step

    matrix_step(_config(args), args.evals, args.out, args.routing)
    return 0


def cmd_prepare(args) -> int:
    from .pipeline import prepare_step

    cfg = _config(args)
    if args.download:
        os.environ["MOE_ADAPTERS_DOWNLOAD"] = "1"
    if args.check_all:
        if cfg["benchmark"] != "mtil":
            raise ConfigError("--check-all checks the paper's raw data (benchmark: mtil)")
        from .mtil_data import check_all

        for name, state in check_all(cfg, [args.dataset] if args.dataset else None).items():
            print(f"{name:<14} {state}")
        return 0
    if not args.dataset:
        raise ConfigError("prepare needs --dataset (or --check-all)")
    prepare_step(cfg, args.dataset, args.out)
    return 0


def cmd_pretrain(args) -> int:
    from .pipeline import pretrain_step

    pretrain_step(_config(args), args.out, not args.no_progress)
    return 0


def cmd_backbone(args) -> int:
    from .pipeline import backbone_step

    backbone_step(_config(args), args.out)
    return 0


def cmd_table(args) -> int:
    from .reporting import table_step
    from .results import format_table

    table_step(_config(args), args.matrix, args.zero_shot, args.out, args.markdown, args.costs, args.metrics_json)
    if args.print:
        print(format_table(args.out))
    return 0


def cmd_costs(args) -> int:
    from .reporting import costs_step

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
    from .reporting import figures_step

    figures_step(
        _config(args),
        args.matrix,
        args.zero_shot,
        args.routing,
        matrix_figure=args.matrix_figure,
        curves_figure=args.curves_figure,
        routing_figure=args.routing_figure,
    )
    return 0


def cmd_expert_figure(args) -> int:
    from .reporting import expert_figure_step

    expert_figure_step(_config(args), args.checkpoint, args.out)
    return 0


def cmd_ledger(args) -> int:
    from .reporting import ledger_step

    ledger_step(args.tables, args.costs, args.out, args.csv, args.rst)
    if args.print:
        print(Path(args.out).read_text())
    return 0


def cmd_pull(args) -> int:
    from .dvcpull import PullError, pull

    try:
        pull(args.stage, args.repo, args.allow_missing)
    except PullError as e:
        print(f"moe-adapters pull: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_show(args) -> int:
    from .results import format_table

    for path in args.tables:
        print(f"{path}\n{format_table(path)}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-adapters", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", "-c", help="run config YAML (default: all defaults, the paper)")
        sp.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. train.iterations=10",
        )

    sp = sub.add_parser("params", help="parameter counts of a randomly initialised model")
    sp.add_argument("--model", default="ViT-B-16")
    sp.add_argument("--setting", choices=["mtil", "cil"], default="mtil")
    sp.add_argument(
        "--image-size", type=int, default=None, help="autoencoder input resolution (default: the model's)"
    )
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_params)

    sp = sub.add_parser("metrics", help="Transfer / Avg / Last from an accuracy matrix CSV")
    sp.add_argument("matrix")
    sp.add_argument("--order", help="check the header against this order of the protocol (order1, order2)")
    sp.add_argument("--benchmark", default="mtil", choices=["mtil", "mini"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_metrics)

    sp = sub.add_parser("check-config", help="validate a config and print it with every default filled in")
    with_config(sp)
    sp.add_argument("--out", help="write it as YAML to this file instead of printing JSON")
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("train-task", help="train one task of the order from the previous task's checkpoint")
    with_config(sp)
    sp.add_argument("--task", type=int, required=True, help="index in the order (0-based)")
    sp.add_argument("--prev", help="checkpoint of the previous task (none for task 0)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--backbone-weights", help="pretrained weights file (overrides model.pretrained)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train_task)

    sp = sub.add_parser("train-autoencoder", help="train DDAS autoencoder K (0: generic data, K: task K-1)")
    with_config(sp)
    sp.add_argument("--index", type=int, required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train_autoencoder)

    sp = sub.add_parser("features", help="zero-shot features and autoencoder errors of one test set")
    with_config(sp)
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--autoencoders", nargs="+", required=True, help="autoencoders 0..T in index order")
    sp.add_argument("--out", required=True)
    sp.add_argument("--backbone-weights")
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("evaluate", help="evaluate a task checkpoint (or zero-shot CLIP) with DDAS routing")
    with_config(sp)
    sp.add_argument("--checkpoint", help="task checkpoint; omit for zero-shot CLIP")
    sp.add_argument("--features-dir", required=True, help="folder of <dataset>.safetensors from `features`")
    sp.add_argument(
        "--dataset", action="append", help="dataset to evaluate (repeatable; default: the whole order)"
    )
    sp.add_argument("--out", required=True)
    sp.add_argument("--backbone-weights")
    sp.add_argument("--print", action="store_true", help="print accuracies and routes")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("prepare", help="prepare one dataset (mini: build it; paper: fetch, verify, split, cache)")
    with_config(sp)
    sp.add_argument("--dataset", help="dataset to prepare (with --check-all: only check this one)")
    sp.add_argument("--out", help="prepared folder (default: <data_root>/<dataset>)")
    sp.add_argument(
        "--check-all",
        action="store_true",
        help="check the raw data of every paper dataset at once (no network); one message lists all that is missing",
    )
    sp.add_argument(
        "--download",
        action="store_true",
        help="paper datasets: download what torchvision can fetch (needs network; HF_HUB_OFFLINE must not be 1)",
    )
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("pretrain", help="mini benchmark: pretrain the tiny CLIP on the captioned pool")
    with_config(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_pretrain)

    sp = sub.add_parser("backbone", help="check the backbone weights are here and record their identity")
    with_config(sp)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_backbone)

    sp = sub.add_parser("table", help="the run's Transfer/Avg/Last table beside zero-shot CLIP and the paper")
    with_config(sp)
    sp.add_argument("--matrix", required=True)
    sp.add_argument("--zero-shot", required=True, help="evaluation JSON of zero-shot CLIP")
    sp.add_argument("--out", required=True, help="the table as CSV")
    sp.add_argument("--markdown", help="also write the table for people (Markdown, with the matrix and cost)")
    sp.add_argument("--costs", help="the run's costs.csv, shown in the Markdown table")
    sp.add_argument("--metrics-json", help="also write metrics.json: means and per dataset, zero-shot CLIP's means")
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

    sp = sub.add_parser("ledger", help="REPRODUCIBILITY.md: paper value beside ours for every setting present")
    sp.add_argument("--tables", nargs="+", required=True, help="result tables <run>_table.csv")
    sp.add_argument("--costs", nargs="+", required=True, help="the runs' costs.csv, in the order of --tables")
    sp.add_argument("--out", required=True, help="the ledger (Markdown)")
    sp.add_argument("--csv", help="also write the ledger as CSV")
    sp.add_argument("--rst", help="also write its headline as reStructuredText (the report's first page)")
    sp.add_argument("--print", action="store_true")
    sp.set_defaults(func=cmd_ledger)

    sp = sub.add_parser("pull", help="dvc pull a stage's outputs, then mark them up to date for Snakemake")
    sp.add_argument("stage", help="a stage of dvc.yaml: mini, mtil_order1, mtil_order2, mtil_order1_5shot")
    sp.add_argument("--repo", default=".", help="the project folder (default: here)")
    sp.add_argument("--allow-missing", action="store_true", help="passed to dvc pull (CI: take what is there)")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser("show", help="print result tables")
    sp.add_argument("tables", nargs="+")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("matrix", help="accuracy matrix and routing table from per-task evaluations")
    with_config(sp)
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSONs of tasks 0..T-1 in order")
    sp.add_argument("--out", required=True)
    sp.add_argument("--routing", required=True)
    sp.set_defaults(func=cmd_matrix)
    return p


def main(argv: list[str] | None = None) -> int:
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
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"moe-adapters {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"moe-adapters {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
