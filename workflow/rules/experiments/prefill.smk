# Prefill attack: harmful / benign prompts x without / with a compliance prefill (2x2).
# Paths and targets come from the plug-in module (traitscope.experiments.prefill).
from traitscope.experiments import prefill as prefill_plugin

PREFILL = config["experiments"]["prefill"]
get_prefill_targets = lambda: prefill_plugin.targets(PREFILL)


if is_enabled("prefill"):
    EXPERIMENT_TARGETS.append(get_prefill_targets)

    rule prefill_conditions:
        input:
            harmful=prompts_path(PREFILL["harmful"]),
            harmless=prompts_path(PREFILL["harmless"]),
        output:
            prompts_path(PREFILL["prompt_set"]),
        log:
            "results/logs/prefill_conditions.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        params:
            settings=settings_param(prefill_plugin.PrefillConditionsSettings, PREFILL),
        shell:
            "traitscope prefill-conditions --harmful {input.harmful} --harmless {input.harmless} "
            "--settings {params.settings:q} --out {output} 2> {log}"

    rule prefill_analysis:
        input:
            **prefill_plugin.analysis_inputs(PREFILL, config),
        output:
            json="results/prefill/condition_comparison.json",
            grid=report(
                "results/prefill/2x2_grid.png",
                caption="../../report/prefill.rst",
                category="3 Prefill attack",
            ),
            trajectory=report(
                "results/prefill/trajectory_divergence.png",
                caption="../../report/prefill.rst",
                category="3 Prefill attack",
            ),
        log:
            "results/logs/prefill_analysis.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            settings=settings_param(prefill_plugin.PrefillAnalysisSettings, PREFILL),
            bow=lambda wildcards, input: input.get("bow", "none"),
            own_bow=lambda wildcards, input: prefill_plugin.own_bow_args(
                PREFILL, config, dict(input.items())
            ),
        shell:
            "traitscope prefill-analysis --projections {input.projections} "
            "--conditions {input.conditions} --out {output.json} "
            "--grid-png {output.grid} --trajectory-png {output.trajectory} "
            "--settings {params.settings:q} --bag-of-words {params.bow} "
            "{params.own_bow} 2> {log}"
