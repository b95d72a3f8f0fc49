# The run's validated config, its accuracy matrix (row i = after task i) and routing table, its cost, its table
# (CSV, Markdown, metrics.json), the ablation tables of its variants, and the reproduction ledger.
# Reporting rules take their own modules as inputs, so a change to them reruns them, and only them.


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
        write_run_config(output.config, log[0], wildcards.run)


rule matrix:
    input:
        code=code("reporting/steps", "metrics"),
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
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters matrix --spec {params.spec:q} --evals {input.evaluations} --out {output.matrix} "
        "--routing {output.routing} > {log} 2>&1"


rule costs:
    input:
        code=code("reporting/steps", "reporting/costs"),
        backbone=planned(backbone_identity),
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
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    params:
        pretrained=pretrained_arg,
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters costs --backbone {input.backbone} {params.pretrained} --checkpoints {input.checkpoints} "
        "--autoencoders {input.autoencoders} --features {input.features} "
        "--evaluations {input.evaluations} {input.zero_shot} --out {output.costs} > {log} 2>&1"


rule table:
    input:
        code=code("reporting/steps", "reporting/tables", "reporting/costs", "metrics"),
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
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters table --spec {params.spec:q} --matrix {input.matrix} --zero-shot {input.zero_shot} "
        "--costs {input.costs} --out {output.table} --markdown {output.markdown} --metrics-json {output.metrics} "
        "> {log} 2>&1"


rule ledger:
    input:
        code=code("reporting/steps", "reporting/tables"),
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
    conda:
        ENV
    params:
        runs=ledger_runs(),
        configs=ledger_configs(),
    shell:
        "moe-adapters ledger --metrics {input.metrics} --out {output.ledger} --csv {output.csv} --rst {output.headline} "
        "> {log} 2>&1"


rule ablation:
    input:
        unpack(ablation_inputs(None)),
        code=code("reporting/steps", "reporting/tables"),
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
    conda:
        ENV
    params:
        title=lambda w: f"Variants of {setting_of(w)}",
    shell:
        "moe-adapters ablation --baseline {input.baseline} --variants {input.variants} --out {output.csv} "
        "--markdown {output.markdown} --title {params.title:q} > {log} 2>&1"


rule ablation_axis:
    input:
        unpack(ablation_inputs(lambda w: w.axis)),
        code=code("reporting/steps", "reporting/tables"),
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
    conda:
        ENV
    params:
        title=lambda w: f"Ablation of {setting_of(w)}: {w.axis}",
        summary=lambda w: "--summary" if w.axis == "seeds" else "",
    shell:
        "moe-adapters ablation --baseline {input.baseline} --variants {input.variants} --out {output.csv} "
        "--markdown {output.markdown} --title {params.title:q} {params.summary} > {log} 2>&1"
