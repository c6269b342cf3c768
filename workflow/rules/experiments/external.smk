# External datasets: harm detection on HarmBench and on BeaverTails per harm category (one
# capture job for every category's sample).
# Paths and targets come from the plug-in module (traitscope.experiments.external).
from traitscope.experiments import external as external_plugin
from traitscope.experiments.external.settings import (
    BeaverTailsSampleSettings,
    ExternalSettings,
)

EXTERNAL = config["experiments"]["external"]
get_external_targets = lambda: external_plugin.targets(EXTERNAL)


if is_enabled("external"):
    EXPERIMENT_TARGETS.append(get_external_targets)

    if EXTERNAL["beavertails"]:
        BT = EXTERNAL["beavertails"]

        rule beavertails_sample:
            input:
                prompts_path(BT["prompt_set"]),
            output:
                prompts_path(external_plugin.beavertails_set(EXTERNAL)),
            log:
                "results/logs/beavertails_sample.log",
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            params:
                settings=settings_param(BeaverTailsSampleSettings, BT),
            shell:
                "traitscope beavertails-sample --prompts {input} "
                "--settings {params.settings:q} --out {output} 2> {log}"

    rule external_analysis:
        input:
            **external_plugin.analysis_inputs(EXTERNAL, config),
        output:
            [
                (
                    report(
                        path,
                        caption="../../report/external.rst",
                        category="2 External datasets",
                    )
                    if path.endswith(".png")
                    else path
                )
                for path in get_external_targets()
            ],
        log:
            "results/logs/external_analysis.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            inputs=lambda wildcards, input: external_plugin.analysis_args(
                EXTERNAL, config, dict(input.items())
            ),
            settings=settings_param(ExternalSettings, EXTERNAL),
        shell:
            "traitscope external-analysis --out-dir {params.out_dir} "
            "--settings {params.settings:q} {params.inputs} 2> {log}"
