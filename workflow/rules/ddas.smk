# DDAS autoencoders: autoencoder 0 on the generic data (TinyImageNet; the mini's pretraining pool),
# autoencoder k on task k-1. Each starts from its own seeded initialisation, so they are independent jobs.


rule autoencoder:
    input:
        data=lambda w: data_meta(ae_dataset(w.run, w.k)),
    output:
        ae=f"{R}/{{run}}/autoencoders/ae_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/autoencoder_{{k}}.log",
    params:
        run=run_args,
    threads: 1
    resources:
        gpu=1,
    shell:
        "{MOE} --threads {threads} train-autoencoder -c {EFF} {params.run} --index {wildcards.k} "
        "--out {output.ae} --no-progress > {log} 2>&1"
