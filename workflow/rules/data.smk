# Datasets in the prepared format (class names, templates, split index lists, uint8 evaluation cache), and the
# mini benchmark's tiny CLIP pretrained on its captioned pool.


rule prepare:
    output:
        meta=f"{DATA}/{{dataset}}/meta.json",
    log:
        f"{R}/logs/prepare/{{dataset}}.log",
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
    params:
        spec=planned(lambda w: PLAN.params("prepare", DEFAULT_RUN, w.dataset)),
        folder=lambda w, output: folder(output.meta),
        root=lambda w, output: str(Path(output.meta).parents[1]),
    shell:
        "moe-adapters --threads {threads} prepare --spec {params.spec:q} --data-root {params.root} "
        "--out {params.folder} --workers {resources.workers} > {log} 2>&1"


if BENCH == "mini":

    rule pretrain:
        input:
            pool=data_meta(CFG.ddas.generic_dataset),
        output:
            weights=CFG.model.pretrained,
        log:
            f"{R}/logs/pretrain.log",
        priority: 10  # first on the critical path (pretraining, then the tasks)
        conda:
            ENV
        threads: workflow.cores
        resources:
            **GPU,
        params:
            spec=planned(lambda w: PLAN.params("pretrain", DEFAULT_RUN)),
            pool=lambda w, input: folder(input.pool),
        shell:
            "moe-adapters --threads {threads} pretrain --spec {params.spec:q} --pool {params.pool} "
            "--out {output.weights} --no-progress > {log} 2>&1"
