# The run's headline: the plan's success criteria per experiment, from the result files of
# those that are enabled (traitscope.summary reads each plug-in's own targets).
from traitscope.summary import cli_args, workflow_inputs

SUMMARY_INPUTS = workflow_inputs(config)


rule summarize:
    input:
        **SUMMARY_INPUTS,
    output:
        json="results/summary.json",
        md="results/summary.md",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="0 Success criteria",
        ),
    log:
        "results/logs/summarize.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        inputs=cli_args(SUMMARY_INPUTS),
    shell:
        "traitscope summarize {params.inputs} --out-json {output.json} "
        "--out-md {output.md} --out-html {output.html} 2> {log}"
