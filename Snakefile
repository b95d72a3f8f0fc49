# MoE-Adapters reproduction: the whole DAG, from data to tables.
#   snakemake results/mtil_order1_table.csv --cores 8 --resources gpu=1   (paper scale, GPU)
#   snakemake --workflow-profile profiles/mini                            (embedded mini benchmark, CPU)
#   snakemake results/mtil_order1_table.csv --workflow-profile profiles/slurm   (paper scale on SLURM, README)
#   snakemake --workflow-profile profiles/mini --report report.html       (then: its HTML report, offline)
# The default target is the config's own run: tables, figures, cost, its config, and the ledger.

from snakemake.utils import min_version

from moe_adapters.workflow.configfiles import checked

min_version("8.0")


# config/config.yaml unless a config file is given (the mini profile gives config/mini.yaml): files are never
# stacked, so a run's config is exactly the file it names plus --config. `checked` reads it first, so that a YAML
# error names the file and the line (Snakemake's reader names neither).
if not workflow.overwrite_configfiles:

    configfile: checked(f"{workflow.basedir}/config/config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    run=f"{MTIL_RUN}|{CIL_RUN}",
    cil_dataset=r"[a-z0-9]+",
    setting=r"[a-z]+(_order[0-9]+(_[0-9]+shot)?)?",
    axis=r"[a-z_]+",
    k=r"[0-9]+",
    dataset=r"[A-Za-z0-9_-]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/ddas.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/results.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/cil.smk"


rule all:
    default_target: True
    input:
        [run_results(run) for run in (DEFAULT_RUN, *PLAN.extra_runs())],
        rules.ledger.output,
