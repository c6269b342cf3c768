# Emergent misalignment: base vs misaligned vs control finetune on benign EM questions.
# Paths and targets come from the plug-in module (traitscope.experiments.emergent_misalignment).
from traitscope.experiments import emergent_misalignment as em_plugin
from traitscope.experiments.emergent_misalignment.settings import (
    EMAnalysisSettings,
    EMBehaviourSettings,
    EMJudgeSettings,
    EMPromptSettings,
    EMTrainingSettings,
)
from traitscope.paths import capture_path

EM = config["experiments"]["emergent_misalignment"]
get_emergent_misalignment_targets = lambda: em_plugin.targets(EM)


if is_enabled("emergent_misalignment"):
    EXPERIMENT_TARGETS.append(get_emergent_misalignment_targets)

    rule em_prompts:
        input:
            [prompts_path(name) for name in EM["question_sets"]],
        output:
            prompts_path(EM["prompt_set"]),
        log:
            "results/logs/em_prompts.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        params:
            settings=settings_param(EMPromptSettings, EM),
        shell:
            "traitscope em-prompts --question-sets {input} --settings {params.settings:q} "
            "--out {output} 2> {log}"

    if EM["persona"]:

        rule em_training_data:
            input:
                prompts=prompts_path(f"traits/{EM['persona']['trait']}"),
                capture=f"results/capture/{EM['base']}/traits/{EM['persona']['trait']}/capture.json",
                avoid=[prompts_path(name) for name in EM["question_sets"]],
            output:
                **em_plugin.training_data_paths(),
            log:
                "results/logs/em_training_data.log",
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            params:
                settings=settings_param(EMTrainingSettings, EM["persona"]),
            shell:
                "traitscope em-training-data --trait-prompts {input.prompts} "
                "--trait-capture {input.capture} --avoid {input.avoid} "
                "--settings {params.settings:q} "
                "--misaligned {output.misaligned} --control {output.control} 2> {log}"

    if EM["behaviour"]["enabled"]:

        rule em_judge:
            input:
                prompts=prompts_path(EM["prompt_set"]),
                capture=lambda w: capture_path(EM[w.role], EM["prompt_set"]),
                judge_model=get_judge_model,
            output:
                **em_plugin.judged_paths("{role}"),
            log:
                "results/logs/em_judge/{role}.log",
            benchmark:
                "results/benchmarks/em_judge/{role}.tsv"
            wildcard_constraints:
                role="|".join(em_plugin.ROLES),
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            resources:
                gpu=MODEL_GPU,
                mem_mb=8000,
            params:
                rubrics=json.dumps(
                    config["prompt_sets"][
                        EM["behaviour"]["rubrics_from"] or EM["question_sets"][0]
                    ],
                    sort_keys=True,
                ),
                mirror=get_mirror_arg(),
                judge=get_judge_json(),
                judge_model=get_judge_model_arg,
                settings=settings_param(EMJudgeSettings, EM["behaviour"]),
            shell:
                "traitscope em-judge --prompts {input.prompts} --capture {input.capture} "
                "--role {wildcards.role} --rubrics-from {params.rubrics:q} {params.mirror} "
                "--cache-dir results/cache --judge {params.judge:q} {params.judge_model} "
                "--settings {params.settings:q} --out {output.table} --out-json {output.json} 2> {log}"

        rule em_behaviour:
            input:
                **{
                    f"{role}_{kind}": path
                    for role in em_plugin.ROLES
                    for kind, path in em_plugin.judged_paths(role).items()
                },
            output:
                em_plugin.behaviour_path(),
            log:
                "results/logs/em_behaviour.log",
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            params:
                judged=" ".join(
                    f"--{role} {paths['table']} --{role}-json {paths['json']}"
                    for role in em_plugin.ROLES
                    for paths in [em_plugin.judged_paths(role)]
                ),
                settings=settings_param(EMBehaviourSettings, EM),
            shell:
                "traitscope em-behaviour {params.judged} --out {output} "
                "--settings {params.settings:q} 2> {log}"

    rule em_analysis:
        input:
            **em_plugin.analysis_inputs(EM),
        output:
            json=f"{em_plugin.OUT_DIR}/variant_comparison.json",
            distributions=report(
                f"{em_plugin.OUT_DIR}/figures/trait_distributions.png",
                caption="../../report/emergent_misalignment.rst",
                category="4 Emergent misalignment",
            ),
            examples=f"{em_plugin.OUT_DIR}/example_answers.md",
        log:
            "results/logs/em_analysis.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            variants=" ".join(f"--{role} {EM[role]}" for role in em_plugin.ROLES),
            settings=settings_param(EMAnalysisSettings, EM),
            behaviour=opt(
                "--behaviour",
                (em_plugin.behaviour_path() if EM["behaviour"]["enabled"] else None),
            ),
        shell:
            "traitscope em-analysis --prompts {input.prompts} {params.variants} "
            "--projections-base {input.projections_base} --capture-base {input.capture_base} "
            "--projections-misaligned {input.projections_misaligned} "
            "--capture-misaligned {input.capture_misaligned} "
            "--projections-control {input.projections_control} "
            "--capture-control {input.capture_control} "
            "--out {output.json} --distributions-png {output.distributions} "
            "--examples-md {output.examples} --draws {input.draws} --settings {params.settings:q} "
            "{params.behaviour} 2> {log}"
