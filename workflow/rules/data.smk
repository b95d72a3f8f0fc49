# Datasets in the prepared format (class names, templates, split index lists, uint8 evaluation cache).


rule prepare:
    output:
        meta=f"{DATA}/{{dataset}}/meta.json",
    log:
        f"{R}/logs/prepare/{{dataset}}.log",
    threads: 1
    shell:
        "{MOE} --threads {threads} prepare -c {EFF} --dataset {wildcards.dataset} "
        "--out {DATA}/{wildcards.dataset} > {log} 2>&1"
