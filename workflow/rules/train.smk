# Training task k of the order from task k-1's checkpoint (experts, routers, frozen set).


def task_dataset(w):
    return PLAN.spec("task", w.run, int(w.k)).dataset


def previous_checkpoint(w):
    k = int(w.k)
    return [] if k == 0 else [owned(rules.train_task.output.checkpoint, "task", w.run, k - 1, k=k - 1)]


rule train_task:
    input:
        data=planned(lambda w: data_meta(task_dataset(w))),
        backbone=planned(lambda w: owned(rules.backbone.output.identity, "backbone", w.run)),
        prev=planned(previous_checkpoint),
        own=only_own("task", lambda w: int(w.k)),
    output:
        checkpoint=f"{R}/{{run}}/checkpoints/task_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/train_task_{{k}}.log",
    params:
        spec=spec("task", lambda w: int(w.k)),
        data=planned(lambda w: f"{DATA}/{task_dataset(w)}"),
        prev=lambda w, input: f"--prev {input.prev[0]}" if input.prev else "",
    threads: workflow.cores
    resources:
        gpu=GPU,
    shell:
        "{MOE} --threads {threads} train-task --spec {params.spec:q} --data {params.data} {params.prev} "
        "--out {output.checkpoint} {RUNTIME} --no-progress > {log} 2>&1"
