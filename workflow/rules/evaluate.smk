# Evaluation: per test set, zero-shot features and autoencoder errors are computed once; then every task
# checkpoint (and zero-shot CLIP) is evaluated on every dataset of the order, with DDAS routing.


def autoencoders(w):
    n = len(datasets(w.run)) + 1
    return [owned(rules.autoencoder.output.ae, "autoencoder", w.run, k, k=k) for k in range(n)]


def features(w):
    return [owned(rules.features.output.features, "features", w.run, d, dataset=d) for d in datasets(w.run)]


rule features:
    input:
        data=planned(lambda w: data_meta(w.dataset)),
        backbone=planned(lambda w: owned(rules.backbone.output.identity, "backbone", w.run)),
        autoencoders=planned(autoencoders),
        own=only_own("features", lambda w: w.dataset),
    output:
        features=f"{R}/{{run}}/features/{{dataset}}.safetensors",
    log:
        f"{R}/{{run}}/logs/features_{{dataset}}.log",
    params:
        spec=spec("features", lambda w: w.dataset),
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "{MOE} --threads {threads} features --spec {params.spec:q} --data {DATA}/{wildcards.dataset} "
        "--autoencoders {input.autoencoders} --out {output.features} {RUNTIME_EVAL} > {log} 2>&1"


rule evaluate:
    input:
        checkpoint=planned(lambda w: owned(rules.train_task.output.checkpoint, "task", w.run, int(w.k), k=w.k)),
        features=planned(features),
        own=only_own("evaluate", lambda w: int(w.k)),
    output:
        evaluation=f"{R}/{{run}}/eval/task_{{k}}.json",
    log:
        f"{R}/{{run}}/logs/evaluate_{{k}}.log",
    params:
        spec=spec("evaluate", lambda w: int(w.k)),
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "{MOE} --threads {threads} evaluate --spec {params.spec:q} --checkpoint {input.checkpoint} "
        "--features {input.features} --data-root {DATA} --out {output.evaluation} {RUNTIME_EVAL} > {log} 2>&1"


rule evaluate_zero_shot:
    input:
        features=planned(features),
        own=only_own("evaluate", lambda w: None),
    output:
        evaluation=f"{R}/{{run}}/eval/zero_shot.json",
    log:
        f"{R}/{{run}}/logs/evaluate_zero_shot.log",
    params:
        spec=spec("evaluate"),
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "{MOE} --threads {threads} evaluate --spec {params.spec:q} --features {input.features} "
        "--data-root {DATA} --out {output.evaluation} {RUNTIME_EVAL} > {log} 2>&1"
