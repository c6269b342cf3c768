# Steering-vector optimisation: CMA-ES on LLM-judged behaviour vs extracted vectors (results/cmaes/).
# Paths and targets come from the plug-in module (traitscope.experiments.steering_optimisation).
from traitscope.experiments import steering_optimisation as so_plugin

SO = config["experiments"]["steering_optimisation"]
# the held-out check's own scorer (a judge: section), where one is set; else the fitness judge
SO_HELDOUT_JUDGE = SO["heldout_judge"]
get_steering_optimisation_targets = lambda: so_plugin.targets(SO)


if is_enabled("steering_optimisation"):
    EXPERIMENT_TARGETS.append(get_steering_optimisation_targets)

    rule cmaes_optimise:
        input:
            unpack(
                lambda w: so_plugin.rule_inputs(w.group, w.trait, BASE, TRAITS_DIR)
                | {"judge_model": get_judge_model(w)}
            ),
        output:
            vectors=directory(
                f"{so_plugin.OUT_DIR}/vectors/optimized/{{group}}/{{trait}}"
            ),
            json=f"{so_plugin.OUT_DIR}/{{group}}/{{trait}}/optimisation.json",
        log:
            "results/logs/cmaes_optimise/{group}/{trait}.log",
        benchmark:
            "results/benchmarks/cmaes_optimise/{group}/{trait}.tsv"
        # the run's longest job and its follower: left to the scheduler, they started after
        # everything else and ended a 2-core run alone for ~5 min; started as soon as the
        # trait's vectors exist, they overlap the rest (as finetune does)
        priority: 5
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            gpu=MODEL_GPU,
            mem_mb=16000,
        params:
            judge=get_judge_json(),
            judge_model=get_judge_model_arg,
            settings=settings_param(so_plugin.OptimisationSettings, SO),
            state=lambda w: so_plugin.state_path(f"{w.group}/{w.trait}"),
        shell:
            "traitscope cmaes-optimise --model {input.model} --vectors {input.vectors} "
            "--evaluation {input.evaluation} --capture {input.capture} --prompts {input.prompts} "
            "--trait-file {input.trait} --judge {params.judge:q} {params.judge_model} "
            "--settings {params.settings:q} --out {output.json} --out-dir {output.vectors} "
            "--state {params.state} 2> {log}"

    rule cmaes_heldout:
        input:
            unpack(
                lambda w: so_plugin.rule_inputs(w.group, w.trait, BASE, TRAITS_DIR)
                | {"judge_model": get_judge_model(w)}
            ),
            optimised=f"{so_plugin.OUT_DIR}/vectors/optimized/{{group}}/{{trait}}",
            heldout_judge=judge_inputs(SO_HELDOUT_JUDGE) if SO_HELDOUT_JUDGE else [],
            # its agreement on the trait's truth set (the fitness judge's: trait_truth_agreement)
            truth=lambda w: (
                truth_files(SO_HELDOUT_JUDGE, f"{w.group}/{w.trait}")
                if SO_HELDOUT_JUDGE
                else []
            ),
        output:
            f"{so_plugin.OUT_DIR}/{{group}}/{{trait}}/heldout.json",
        log:
            "results/logs/cmaes_heldout/{group}/{trait}.log",
        benchmark:
            "results/benchmarks/cmaes_heldout/{group}/{trait}.tsv"
        # right after the optimisation, for the same reason
        priority: 5
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            gpu=MODEL_GPU,
            mem_mb=16000,
        params:
            judge=get_judge_json(),
            judge_model=get_judge_model_arg,
            heldout_judge=lambda w, input: (
                judge_args(SO_HELDOUT_JUDGE, "--heldout-judge")
                if SO_HELDOUT_JUDGE
                else ""
            )
            + (f" --truth {input.truth[0]}" if input.truth else ""),
            settings=settings_param(so_plugin.OptimisationSettings, SO),
        shell:
            "traitscope cmaes-heldout --model {input.model} --vectors {input.vectors} "
            "--evaluation {input.evaluation} --optimised {input.optimised} "
            "--trait-file {input.trait} --judge {params.judge:q} {params.judge_model} "
            "{params.heldout_judge} --settings {params.settings:q} --out {output} 2> {log}"

    rule cmaes_report:
        input:
            **so_plugin.report_inputs(SO, BASE),
            truth_agreements=[
                p for t in SO["traits"] if (p := truth_agreement_path(BASE, t))
            ],
        output:
            json=f"{so_plugin.OUT_DIR}/extraction_gap.json",
            png=report(
                f"{so_plugin.OUT_DIR}/optimization_curves.png",
                caption="../../report/steering_optimisation.rst",
                category="6 Steering optimisation",
            ),
        log:
            "results/logs/cmaes_report.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        params:
            traits=" ".join(SO["traits"]),
            truth=" ".join(
                f"{t}={p}"
                for t in SO["traits"]
                if (p := truth_agreement_path(BASE, t))
            ),
        shell:
            "traitscope cmaes-report --traits {params.traits} "
            "--optimisations {input.optimisations} --heldouts {input.heldouts} "
            "--agreements {input.agreements} --truth-agreements {params.truth} "
            "--out {output.json} --png {output.png} 2> {log}"
