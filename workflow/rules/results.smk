# The accuracy matrix (row i = after task i), the routing table, and the run's table.


rule matrix:
    input:
        evaluations=evaluations,
    output:
        matrix=f"{R}/{{run}}/matrix.csv",
        routing=f"{R}/{{run}}_routing.csv",
    log:
        f"{R}/{{run}}/logs/matrix.log",
    params:
        run=run_args,
    shell:
        "{MOE} matrix -c {EFF} {params.run} --evals {input.evaluations} --out {output.matrix} "
        "--routing {output.routing} > {log} 2>&1"


rule table:
    input:
        matrix=rules.matrix.output.matrix,
        zero_shot=rules.evaluate_zero_shot.output.evaluation,
    output:
        table=f"{R}/{{run}}_table.csv",
    log:
        f"{R}/{{run}}/logs/table.log",
    params:
        run=run_args,
    shell:
        "{MOE} table -c {EFF} {params.run} --matrix {input.matrix} --zero-shot {input.zero_shot} "
        "--out {output.table} > {log} 2>&1"
