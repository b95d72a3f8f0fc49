# DDAS autoencoders: autoencoder 0 on the generic data (TinyImageNet; the mini's pretraining pool), autoencoder k
# on task k-1. Each starts from its own seeded initialisation, so they are independent jobs.


def autoencoder_dataset(w):
    return PLAN.spec("autoencoder", w.run, int(w.k)).dataset


rule autoencoder:
    input:
        data=planned(lambda w: data_meta(autoencoder_dataset(w))),
        own=only_own("autoencoder", lambda w: int(w.k)),
    output:
        ae=f"{R}/{{run}}/autoencoders/ae_{{k}}.safetensors",
    log:
        f"{R}/{{run}}/logs/autoencoder_{{k}}.log",
    params:
        spec=spec("autoencoder", lambda w: int(w.k)),
        data=planned(lambda w: f"{DATA}/{autoencoder_dataset(w)}"),
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "{MOE} --threads {threads} train-autoencoder --spec {params.spec:q} --data {params.data} "
        "--out {output.ae} {RUNTIME} --no-progress > {log} 2>&1"
