# The run's validated config, its accuracy matrix (row i = after task i) and routing table, its cost, its table
# (CSV, Markdown, metrics.json), the ablation tables of its variants, and the reproduction ledger.
# Reporting rules take their own modules as inputs, so a change to them reruns them, and only them.


def code(*modules):
    """The package's own files a reporting rule runs, as inputs: editing one reruns just the rules that use it."""
    return [str(SRC / f"{m}.py") for m in modules]


SRC = Path(moe_adapters.reporting.__file__).resolve().parent


def report_params(w):
    return PLAN.params("report", w.run)


def config_hash(w):
    return PLAN.spec("report", w.run).config_hash


def deviations_text(w):
    from moe_adapters.config import format_deviations

    return format_deviations(PLAN.spec("report", w.run).deviations)


def evaluations(w):
    n = len(datasets(w.run))
    return [owned(rules.evaluate.output.evaluation, "evaluate", w.run, k, k=k) for k in range(n)]


def checkpoints(w):
    n = len(datasets(w.run))
    return [owned(rules.train_task.output.checkpoint, "task", w.run, k, k=k) for k in range(n)]


def zero_shot(w):
    return owned(rules.evaluate_zero_shot.output.evaluation, "evaluate", w.run, None)


rule run_config:
    output:
        config=report(
            f"{R}/{{run}}/config.yaml",
            caption="../report/config.rst",
            category="Config",
            subcategory="{run}",
            labels={"config": "validated run config (YAML)"},
        ),
    log:
        f"{R}/{{run}}/logs/run_config.log",
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    run:
        # written by Snakemake itself: the run's config is the plan's (variants and --config included)
        write_text(output.config, run_config_yaml(PLAN.run(wildcards.run)))
        write_text(log[0], f"wrote {output.config}\n")


rule matrix:
    input:
        code=code("steps"),
        evaluations=planned(evaluations),
    output:
        matrix=report(
            f"{R}/{{run}}/matrix.csv",
            caption="../report/matrix.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "accuracy matrix (CSV)"},
        ),
        routing=report(
            f"{R}/{{run}}_routing.csv",
            caption="../report/routing_csv.rst",
            category="Figures",
            subcategory="{run}",
            labels={"figure": "routing (CSV data)"},
        ),
    log:
        f"{R}/{{run}}/logs/matrix.log",
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "{MOE} matrix --spec {params.spec:q} --evals {input.evaluations} --out {output.matrix} "
        "--routing {output.routing} > {log} 2>&1"


rule costs:
    input:
        code=code("steps", "costs"),
        backbone=planned(lambda w: owned(rules.backbone.output.identity, "backbone", w.run)),
        pretrained=[rules.pretrain.output.weights] if BENCH == "mini" else [],
        checkpoints=planned(checkpoints),
        autoencoders=planned(autoencoders),
        features=planned(features),
        evaluations=planned(evaluations),
        zero_shot=planned(zero_shot),
    output:
        costs=report(
            f"{R}/{{run}}/costs.csv",
            caption="../report/costs.rst",
            category="Cost",
            subcategory="{run}",
            labels={"table": "cost of every step (CSV)"},
        ),
    log:
        f"{R}/{{run}}/logs/costs.log",
    params:
        pretrained=lambda w, input: f"--pretrained {input.pretrained}" if input.pretrained else "",
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "{MOE} costs --backbone {input.backbone} {params.pretrained} --checkpoints {input.checkpoints} "
        "--autoencoders {input.autoencoders} --features {input.features} "
        "--evaluations {input.evaluations} {input.zero_shot} --out {output.costs} > {log} 2>&1"


rule table:
    input:
        code=code("steps", "tables", "costs"),
        matrix=rules.matrix.output.matrix,
        zero_shot=planned(zero_shot),
        costs=rules.costs.output.costs,
    output:
        table=report(
            f"{R}/{{run}}_table.csv",
            caption="../report/table.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "Transfer / Avg / Last (CSV)"},
        ),
        markdown=report(
            f"{R}/{{run}}_table.md",
            caption="../report/table_md.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "Transfer / Avg / Last, matrix, cost (Markdown)"},
        ),
        metrics=report(
            f"{R}/{{run}}_metrics.json",
            caption="../report/metrics.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "means and per dataset (metrics.json)"},
        ),
    log:
        f"{R}/{{run}}/logs/table.log",
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "{MOE} table --spec {params.spec:q} --matrix {input.matrix} --zero-shot {input.zero_shot} "
        "--costs {input.costs} --out {output.table} --markdown {output.markdown} --metrics-json {output.metrics} "
        "> {log} 2>&1"


def ledger_runs():
    return list(CFG.report.ledger_runs) or [DEFAULT_RUN]


rule ledger:
    input:
        code=code("steps", "tables"),
        metrics=expand(rules.table.output.metrics, run=ledger_runs()),
    output:
        ledger=report(
            f"{R}/REPRODUCIBILITY.md",
            caption="../report/ledger.rst",
            category="Ledger",
            labels={"ledger": "REPRODUCIBILITY.md"},
        ),
        csv=report(
            f"{R}/ledger.csv",
            caption="../report/ledger.rst",
            category="Ledger",
            labels={"ledger": "ledger (CSV)"},
        ),
        headline=f"{R}/ledger.rst",
    log:
        f"{R}/logs/ledger.log",
    params:
        runs=ledger_runs(),
        configs=[f"{run}: {PLAN.spec('report', run).config_hash}" for run in ledger_runs()],
    shell:
        "{MOE} ledger --metrics {input.metrics} --out {output.ledger} --csv {output.csv} --rst {output.headline} "
        "> {log} 2>&1"


def setting_of(w):
    """`mini` stands for the config's own setting (results/mini/mini_ablation.md)."""
    return PLAN.baseline(DEFAULT_RUN) if w.setting == BENCH else w.setting


def ablation_inputs(axis):
    def inputs(w):
        setting = setting_of(w)
        runs = PLAN.ablation_variants(setting, axis(w) if axis else None)
        return {
            "baseline": expand(rules.table.output.metrics, run=setting)[0],
            "variants": expand(rules.table.output.metrics, run=runs),
        }

    return planned(inputs)


rule ablation:
    input:
        unpack(ablation_inputs(None)),
        code=code("steps", "tables"),
    output:
        csv=f"{R}/{{setting}}_ablation.csv",
        markdown=report(
            f"{R}/{{setting}}_ablation.md",
            caption="../report/ablation.rst",
            category="Ablations",
            labels={"table": "{setting}: the config's variants"},
        ),
    log:
        f"{R}/logs/ablation_{{setting}}.log",
    params:
        title=lambda w: f"Variants of {setting_of(w)}",
    shell:
        "{MOE} ablation --baseline {input.baseline} --variants {input.variants} --out {output.csv} "
        "--markdown {output.markdown} --title {params.title:q} > {log} 2>&1"


rule ablation_axis:
    input:
        unpack(ablation_inputs(lambda w: w.axis)),
        code=code("steps", "tables"),
    output:
        csv=f"{R}/{{setting}}_ablation_{{axis}}.csv",
        markdown=report(
            f"{R}/{{setting}}_ablation_{{axis}}.md",
            caption="../report/ablation.rst",
            category="Ablations",
            labels={"table": "{setting}: {axis}"},
        ),
    log:
        f"{R}/logs/ablation_{{setting}}_{{axis}}.log",
    params:
        title=lambda w: f"Ablation of {setting_of(w)}: {w.axis}",
        summary=lambda w: "--summary" if w.axis == "seeds" else "",
    shell:
        "{MOE} ablation --baseline {input.baseline} --variants {input.variants} --out {output.csv} "
        "--markdown {output.markdown} --title {params.title:q} {params.summary} > {log} 2>&1"
