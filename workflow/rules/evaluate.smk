# Evaluation: per test set, zero-shot features and autoencoder errors are computed once; then every
# task checkpoint is evaluated on every dataset of the order, with DDAS routing.


rule features:
    input:
        data=lambda w: data_meta(w.dataset),
        backbone=rules.backbone.output.identity,
        autoencoders=autoencoders,
    output:
        features=f"{R}/{{run}}/features/{{dataset}}.safetensors",
    log:
        f"{R}/{{run}}/logs/features_{{dataset}}.log",
    params:
        run=run_args,
    threads: 1
    resources:
        gpu=1,
    shell:
        "{MOE} --threads {threads} features -c {EFF} {params.run} --dataset {wildcards.dataset} "
        "--autoencoders {input.autoencoders} --out {output.features} > {log} 2>&1"


rule evaluate:
    input:
        checkpoint=f"{R}/{{run}}/checkpoints/task_{{k}}.safetensors",
        features=features,
    output:
        evaluation=f"{R}/{{run}}/eval/task_{{k}}.json",
    log:
        f"{R}/{{run}}/logs/evaluate_{{k}}.log",
    params:
        run=run_args,
    threads: 1
    resources:
        gpu=1,
    shell:
        "{MOE} --threads {threads} evaluate -c {EFF} {params.run} --checkpoint {input.checkpoint} "
        "--features-dir {R}/{wildcards.run}/features --out {output.evaluation} > {log} 2>&1"


rule evaluate_zero_shot:
    input:
        features=features,
    output:
        evaluation=f"{R}/{{run}}/eval/zero_shot.json",
    log:
        f"{R}/{{run}}/logs/evaluate_zero_shot.log",
    params:
        run=run_args,
    threads: 1
    resources:
        gpu=1,
    shell:
        "{MOE} --threads {threads} evaluate -c {EFF} {params.run} "
        "--features-dir {R}/{wildcards.run}/features --out {output.evaluation} > {log} 2>&1"
