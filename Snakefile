# MoE-Adapters reproduction: the whole DAG, from data to tables.
#   snakemake results/mtil_order1_table.csv --cores 8 --resources gpu=1     (paper scale, GPU)
#   snakemake --profile profiles/mini                                      (embedded mini benchmark, CPU)
# The default target is the run of the config's order and setting: tables, figures, cost, and the ledger.
#   snakemake --report report.html                                         (then: the HTML report, offline)

from snakemake.utils import min_version

min_version("8.0")


configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    input:
        default_target(),


include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/ddas.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/results.smk"
include: "workflow/rules/figures.smk"
