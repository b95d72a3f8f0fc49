# Training task k of the order from task k-1's checkpoint (experts, routers, frozen set).
# Not for an imported run (TRAINED_RUN): its checkpoints are the authors' files, which no rule makes.


rule train_task:
    input:
        data=planned(lambda w: data_meta(task_dataset(w))),
        backbone=planned(backbone_identity),
        prev=planned(previous_checkpoint),
        own=only_own("task", lambda w: int(w.k)),
    output:
        checkpoint=f"{R}/{{run}}/checkpoints/task_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/train_task_{{k}}.log",
    wildcard_constraints:
        run=TRAINED_RUN,
    priority: 10  # the chain of tasks is the critical path: a ready task starts before any evaluation or figure
    conda:
        ENV
    threads: workflow.cores
    resources:
        **RUNTIME,
        **GPU,
    params:
        spec=spec("task", lambda w: int(w.k)),
        data=lambda w, input: folder(input.data),
        prev=prev_arg,
    shell:
        "moe-adapters --threads {threads} train-task --spec {params.spec:q} --data {params.data} {params.prev} "
        "--out {output.checkpoint} --workers {resources.workers} --checkpoint-every {resources.checkpoint_every} "
        "--batched-experts {resources.batched_experts} --truncate-text {resources.truncate_text} "
        "--no-progress > {log} 2>&1"
