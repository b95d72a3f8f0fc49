# DDAS autoencoders: autoencoder 0 on the generic data (TinyImageNet; the mini's pretraining pool), autoencoder k
# on task k-1. Each starts from its own seeded initialisation, so they are independent jobs.
# Not for an imported run (TRAINED_RUN): its autoencoders are the authors' files.


rule autoencoder:
    input:
        data=planned(lambda w: data_meta(autoencoder_dataset(w))),
        own=only_own("autoencoder", lambda w: int(w.k)),
    output:
        ae=f"{R}/{{run}}/autoencoders/ae_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/autoencoder_{{k}}.log",
    wildcard_constraints:
        run=TRAINED_RUN,
    conda:
        ENV
    threads: 1
    resources:
        **RUNTIME,
        **GPU,
    params:
        spec=spec("autoencoder", lambda w: int(w.k)),
        data=lambda w, input: folder(input.data),
    shell:
        "moe-adapters --threads {threads} train-autoencoder --spec {params.spec:q} --data {params.data} "
        "--out {output.ae} --workers {resources.workers} --checkpoint-every {resources.checkpoint_every} "
        "--no-progress > {log} 2>&1"
