# The frozen CLIP backbone: OpenAI ViT-B/16 at paper scale (checked, never downloaded here),
# or, for the mini benchmark, a tiny CLIP pretrained by the `pretrain` rule.

if BENCH == "mini":

    rule pretrain:
        input:
            pool=data_meta(GENERIC),
        output:
            weights=CFG["model"]["pretrained"],
        log:
            f"{R}/logs/pretrain.log",
        threads: workflow.cores
        resources:
            gpu=1,
        shell:
            "{MOE} --threads {threads} pretrain -c {EFF} --out {output.weights} --no-progress > {log} 2>&1"


rule backbone:
    input:
        weights=[CFG["model"]["pretrained"]] if BENCH == "mini" else [],
    output:
        identity=f"{R}/{{run}}/backbone.json",
    log:
        f"{R}/{{run}}/logs/backbone.log",
    shell:
        "{MOE} backbone -c {EFF} --out {output.identity} > {log} 2>&1"
