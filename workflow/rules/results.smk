# The accuracy matrix (row i = after task i), the routing table, the run's cost, its table (CSV and Markdown),
# the validated config of the run, and the reproduction ledger over every run present.


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
        run=run_args,
        config_hash=run_config_hash,
    shell:
        "{MOE} check-config -c {EFF} {params.run} --out {output.config} > {log} 2>&1"


rule matrix:
    input:
        code=code("metrics"),
        evaluations=evaluations,
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
        run=run_args,
        config_hash=run_config_hash,
    shell:
        "{MOE} matrix -c {EFF} {params.run} --evals {input.evaluations} --out {output.matrix} "
        "--routing {output.routing} > {log} 2>&1"


rule costs:
    input:
        code=code("reporting", "costs"),
        backbone=rules.backbone.output.identity,
        pretrained=[rules.pretrain.output.weights] if BENCH == "mini" else [],
        checkpoints=task_checkpoints,
        autoencoders=autoencoders,
        features=features,
        evaluations=evaluations,
        zero_shot=rules.evaluate_zero_shot.output.evaluation,
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
        config_hash=run_config_hash,
    shell:
        "{MOE} costs --backbone {input.backbone} {params.pretrained} --checkpoints {input.checkpoints} "
        "--autoencoders {input.autoencoders} --features {input.features} "
        "--evaluations {input.evaluations} {input.zero_shot} --out {output.costs} > {log} 2>&1"


rule table:
    input:
        code=code("reporting", "results", "metrics", "costs"),
        matrix=rules.matrix.output.matrix,
        zero_shot=rules.evaluate_zero_shot.output.evaluation,
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
        run=run_args,
        config_hash=run_config_hash,
    shell:
        "{MOE} table -c {EFF} {params.run} --matrix {input.matrix} --zero-shot {input.zero_shot} "
        "--costs {input.costs} --out {output.table} --markdown {output.markdown} --metrics-json {output.metrics} "
        "> {log} 2>&1"


rule ledger:
    input:
        code=code("reporting", "results", "costs"),
        tables=[f"{R}/{run}_table.csv" for run in ledger_runs()],
        costs=[f"{R}/{run}/costs.csv" for run in ledger_runs()],
    output:
        ledger=report(
            LEDGER,
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
        configs=[f"{run}: {config_hash_of(run)}" for run in ledger_runs()],
    shell:
        "{MOE} ledger --tables {input.tables} --costs {input.costs} --out {output.ledger} "
        "--csv {output.csv} --rst {output.headline} > {log} 2>&1"
