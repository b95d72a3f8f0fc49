# The class-incremental half of the paper (CIFAR100 in 10/20/50 steps, TinyImageNet 100 + 5/10/20, the mini's own):
# per run, the dataset's class-incremental view, one training job per step from the previous step's checkpoint, an
# evaluation after every step on every class seen so far, zero-shot CLIP on the same images, then ACC.csv, the table
# (Avg / Last beside the paper), the per-step figure and the cost.


rule prepare_cil:
    input:
        prepared=planned(cil_sources),
    output:
        meta=f"{DATA}/cil/{{cil_dataset}}/meta.json",
    log:
        f"{R}/logs/prepare_cil/{{cil_dataset}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
    params:
        spec=planned(lambda w: PLAN.params("cil_prepare", PLAN.cil_view_run(w.cil_dataset))),
        prepared=lambda w, input: [folder(p) for p in input.prepared],
        folder=lambda w, output: folder(output.meta),
    shell:
        "moe-adapters --threads {threads} prepare-cil --spec {params.spec:q} --prepared {params.prepared} "
        "--out {params.folder} --workers {resources.workers} > {log} 2>&1"


rule cil_train:
    input:
        view=planned(cil_view),
        backbone=planned(backbone_identity),
        prev=planned(previous_step),
        own=only_own("cil_step", lambda w: int(w.k)),
    output:
        checkpoint=f"{R}/{{run}}/checkpoints/step_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/cil_train_{{k}}.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    threads: workflow.cores
    resources:
        **RUNTIME,
        **GPU,
    params:
        spec=spec("cil_step", lambda w: int(w.k)),
        view=lambda w, input: folder(input.view),
        prev=prev_arg,
    shell:
        "moe-adapters --threads {threads} train-step --spec {params.spec:q} --view {params.view} {params.prev} "
        "--out {output.checkpoint} --workers {resources.workers} --checkpoint-every {resources.checkpoint_every} "
        "--batched-experts {resources.batched_experts} --truncate-text {resources.truncate_text} "
        "--no-progress > {log} 2>&1"


rule cil_evaluate:
    input:
        checkpoint=planned(step_checkpoint),
        view=planned(cil_view),
        own=only_own("cil_evaluate", lambda w: int(w.k)),
    output:
        evaluation=f"{R}/{{run}}/eval/step_{{k}}.json",
    log:
        f"{R}/{{run}}/logs/cil_evaluate_{{k}}.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
        **GPU,
    params:
        spec=spec("cil_evaluate", lambda w: int(w.k)),
        view=lambda w, input: folder(input.view),
    shell:
        "moe-adapters --threads {threads} evaluate-step --spec {params.spec:q} --checkpoint {input.checkpoint} "
        "--view {params.view} --out {output.evaluation} --workers {resources.workers} "
        "--batched-experts {resources.batched_experts} --truncate-text {resources.truncate_text} > {log} 2>&1"


rule cil_zero_shot:
    input:
        view=planned(cil_view),
        backbone=planned(backbone_identity),
        own=only_own("cil_evaluate", lambda w: None),
    output:
        evaluation=f"{R}/{{run}}/eval/zero_shot_steps.json",
    log:
        f"{R}/{{run}}/logs/cil_zero_shot.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
        **GPU,
    params:
        spec=spec("cil_evaluate"),
        view=lambda w, input: folder(input.view),
    shell:
        "moe-adapters --threads {threads} evaluate-step --spec {params.spec:q} --view {params.view} "
        "--out {output.evaluation} --workers {resources.workers} --truncate-text {resources.truncate_text} "
        "> {log} 2>&1"


rule cil_matrix:
    input:
        code=code("reporting/steps", "metrics", "steps/cil"),
        evaluations=planned(step_evaluations),
    output:
        accuracy=report(
            f"{R}/{{run}}/accuracy.csv",
            caption="../report/cil_accuracy.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "accuracy after every step (ACC.csv)"},
        ),
    log:
        f"{R}/{{run}}/logs/cil_matrix.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters cil-matrix --spec {params.spec:q} --evals {input.evaluations} --out {output.accuracy} > {log} 2>&1"


rule cil_costs:
    input:
        code=code("reporting/steps", "reporting/costs"),
        backbone=planned(backbone_identity),
        pretrained=[rules.pretrain.output.weights] if BENCH == "mini" else [],
        checkpoints=planned(step_checkpoints),
        evaluations=planned(step_evaluations),
        zero_shot=planned(cil_zero_shot_eval),
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
        run=CIL_RUN,
    conda:
        ENV
    params:
        pretrained=pretrained_arg,
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters costs --backbone {input.backbone} {params.pretrained} --checkpoints {input.checkpoints} "
        "--evaluations {input.evaluations} {input.zero_shot} --out {output.costs} > {log} 2>&1"


rule cil_table:
    input:
        code=code("reporting/steps", "reporting/tables", "reporting/costs", "metrics"),
        accuracy=rules.cil_matrix.output.accuracy,
        zero_shot=planned(cil_zero_shot_eval),
        costs=rules.cil_costs.output.costs,
    output:
        table=report(
            f"{R}/{{run}}_table.csv",
            caption="../report/cil_table.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "Avg / Last (CSV)"},
        ),
        markdown=report(
            f"{R}/{{run}}_table.md",
            caption="../report/table_md.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "Avg / Last, every step, cost (Markdown)"},
        ),
        metrics=report(
            f"{R}/{{run}}_metrics.json",
            caption="../report/metrics.rst",
            category="Accuracy tables",
            subcategory="{run}",
            labels={"table": "Avg, Last, forgetting, BWT (metrics.json)"},
        ),
    log:
        f"{R}/{{run}}/logs/table.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters cil-table --spec {params.spec:q} --accuracy {input.accuracy} --zero-shot {input.zero_shot} "
        "--costs {input.costs} --out {output.table} --markdown {output.markdown} --metrics-json {output.metrics} "
        "> {log} 2>&1"


rule cil_figure:
    input:
        code=code("reporting/steps", "reporting/figures"),
        accuracy=rules.cil_matrix.output.accuracy,
        zero_shot=planned(cil_zero_shot_eval),
    output:
        figure=report(
            f"{R}/{{run}}/figures/accuracy_per_step.png",
            caption="../report/cil_figure.rst",
            category="Figures",
            subcategory="{run}",
            labels={"figure": "accuracy after every step"},
        ),
    log:
        f"{R}/{{run}}/logs/cil_figure.log",
    wildcard_constraints:
        run=CIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters cil-figure --spec {params.spec:q} --accuracy {input.accuracy} --zero-shot {input.zero_shot} "
        "--out {output.figure} > {log} 2>&1"
