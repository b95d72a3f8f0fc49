# Training task k of the order from task k-1's checkpoint (experts, routers, frozen set).


def previous_checkpoint(wildcards):
    k = int(wildcards.k)
    return [] if k == 0 else [f"{R}/{wildcards.run}/checkpoints/task_{k - 1}.safetensors"]


rule train_task:
    input:
        data=lambda w: data_meta(task_dataset(w.run, w.k)),
        backbone=rules.backbone.output.identity,
        prev=previous_checkpoint,
    output:
        checkpoint=f"{R}/{{run}}/checkpoints/task_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/train_task_{{k}}.log",
    params:
        run=run_args,
        prev=lambda w, input: f"--prev {input.prev[0]}" if input.prev else "",
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "{MOE} --threads {threads} train-task -c {EFF} {params.run} --task {wildcards.k} {params.prev} "
        "--out {output.checkpoint} --no-progress > {log} 2>&1"
