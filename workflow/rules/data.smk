# Datasets in the prepared format (class names, templates, split index lists, uint8 evaluation cache), and the
# mini benchmark's tiny CLIP pretrained on its captioned pool.


rule prepare:
    output:
        meta=f"{DATA}/{{dataset}}/meta.json",
    log:
        f"{R}/logs/prepare/{{dataset}}.log",
    params:
        spec=planned(lambda w: PLAN.params("prepare", DEFAULT_RUN, w.dataset)),
    threads: 1
    shell:
        "{MOE} --threads {threads} prepare --spec {params.spec:q} --data-root {DATA} "
        "--out {DATA}/{wildcards.dataset} {RUNTIME_EVAL} > {log} 2>&1"


if BENCH == "mini":

    rule pretrain:
        input:
            pool=data_meta(CFG.ddas.generic_dataset),
        output:
            weights=CFG.model.pretrained,
        log:
            f"{R}/logs/pretrain.log",
        params:
            spec=planned(lambda w: PLAN.params("pretrain", DEFAULT_RUN)),
        threads: workflow.cores
        resources:
            gpu=GPU,
        shell:
            "{MOE} --threads {threads} pretrain --spec {params.spec:q} --pool {DATA}/{CFG.ddas.generic_dataset} "
            "--out {output.weights} --no-progress > {log} 2>&1"
