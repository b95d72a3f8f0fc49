# Figures of a run: the accuracy matrix, each dataset's accuracy across tasks, DDAS routing (from the matrix,
# the zero-shot evaluation and the routing table), and per task the selection counts of the experts.


rule figures:
    input:
        code=code("reporting/steps", "reporting/figures"),
        matrix=rules.matrix.output.matrix,
        routing=rules.matrix.output.routing,
        zero_shot=planned(zero_shot),
    output:
        matrix=report(
            f"{R}/{{run}}/figures/accuracy_matrix.png",
            caption="../report/accuracy_matrix.rst",
            category="Figures",
            subcategory="{run}",
            labels={"figure": "accuracy matrix"},
        ),
        curves=report(
            f"{R}/{{run}}/figures/accuracy_per_dataset.png",
            caption="../report/accuracy_per_dataset.rst",
            category="Figures",
            subcategory="{run}",
            labels={"figure": "accuracy per dataset across tasks"},
        ),
        routing=report(
            f"{R}/{{run}}/figures/routing.png",
            caption="../report/routing.rst",
            category="Figures",
            subcategory="{run}",
            labels={"figure": "routing (DDAS)"},
        ),
    log:
        f"{R}/{{run}}/logs/figures.log",
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters figures --spec {params.spec:q} --matrix {input.matrix} --zero-shot {input.zero_shot} "
        "--routing {input.routing} --matrix-figure {output.matrix} --curves-figure {output.curves} "
        "--routing-figure {output.routing} > {log} 2>&1"


rule expert_figure:
    input:
        code=code("reporting/steps", "reporting/figures"),
        checkpoint=planned(task_checkpoint),
    output:
        figure=report(
            f"{R}/{{run}}/figures/experts_task_{{k}}.png",
            caption="../report/experts.rst",
            category="Figures",
            subcategory="{run}",
            labels=lambda w: {"figure": f"expert selection, task {int(w.k):02d}: {task_dataset(w)}"},
        ),
    log:
        f"{R}/{{run}}/logs/expert_figure_{{k}}.log",
    wildcard_constraints:
        run=TRAINED_RUN,
    conda:
        ENV
    params:
        spec=planned(report_params),
        config_hash=planned(config_hash),
        deviations=planned(deviations_text),
    shell:
        "moe-adapters expert-figure --spec {params.spec:q} --checkpoint {input.checkpoint} --out {output.figure} "
        "> {log} 2>&1"
