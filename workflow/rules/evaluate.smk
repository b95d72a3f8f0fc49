# Evaluation: per test set, zero-shot features and autoencoder errors are computed once; then every task
# checkpoint (and zero-shot CLIP) is evaluated on every dataset of the order, with DDAS routing. Checkpoint k's
# evaluation follows checkpoint k-1's and reuses its routed image features where provably unchanged (reuse.py).


rule features:
    input:
        data=planned(lambda w: data_meta(w.dataset)),
        backbone=planned(backbone_identity),
        autoencoders=planned(autoencoders),
        own=only_own("features", lambda w: w.dataset),
    output:
        features=f"{R}/{{run}}/features/{{dataset}}.safetensors",
    log:
        f"{R}/{{run}}/logs/features_{{dataset}}.log",
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
        **GPU,
    params:
        spec=spec("features", lambda w: w.dataset),
        data=lambda w, input: folder(input.data),
    shell:
        "moe-adapters --threads {threads} features --spec {params.spec:q} --data {params.data} "
        "--autoencoders {input.autoencoders} --out {output.features} --workers {resources.workers} "
        "--truncate-text {resources.truncate_text} > {log} 2>&1"


rule evaluate:
    input:
        checkpoint=planned(task_checkpoint),
        features=planned(features),
        previous=planned(previous_evaluation),
        own=only_own("evaluate", lambda w: int(w.k)),
    output:
        evaluation=f"{R}/{{run}}/eval/task_{{k}}.json",
    log:
        f"{R}/{{run}}/logs/evaluate_{{k}}.log",
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
        **GPU,
    params:
        spec=spec("evaluate", lambda w: int(w.k)),
        root=DATA,
    shell:
        "moe-adapters --threads {threads} evaluate --spec {params.spec:q} --checkpoint {input.checkpoint} "
        "--features {input.features} --data-root {params.root} --out {output.evaluation} --previous {input.previous} "
        "--reuse-features {resources.reuse_features} --batched-experts {resources.batched_experts} "
        "--truncate-text {resources.truncate_text} > {log} 2>&1"


rule evaluate_zero_shot:
    input:
        features=planned(features),
        own=only_own("evaluate", lambda w: None),
    output:
        evaluation=f"{R}/{{run}}/eval/zero_shot.json",
    log:
        f"{R}/{{run}}/logs/evaluate_zero_shot.log",
    wildcard_constraints:
        run=MTIL_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME_EVAL,
        **GPU,
    params:
        spec=spec("evaluate"),
        root=DATA,
    shell:
        "moe-adapters --threads {threads} evaluate --spec {params.spec:q} --features {input.features} "
        "--data-root {params.root} --out {output.evaluation} --truncate-text {resources.truncate_text} > {log} 2>&1"
