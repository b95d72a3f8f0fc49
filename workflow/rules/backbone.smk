# The frozen CLIP backbone: OpenAI ViT-B/16 at paper scale (checked, never downloaded here), or, for the mini
# benchmark, the tiny CLIP of the `pretrain` rule. Its identity (a SHA-256 fingerprint) is what every checkpoint
# and feature file is checked against.


rule backbone:
    input:
        weights=[rules.pretrain.output.weights] if BENCH == "mini" else [],
        own=only_own("backbone", lambda w: None),
    output:
        identity=f"{R}/{{run}}/backbone.json",
    log:
        f"{R}/{{run}}/logs/backbone.log",
    conda:
        ENV
    params:
        spec=spec("backbone"),
    shell:
        "moe-adapters backbone --spec {params.spec:q} --out {output.identity} > {log} 2>&1"
