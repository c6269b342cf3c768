# Backdoor detection: a LoRA finetune with a trigger-conditioned backdoor vs its base model on
# held-out trigger/control pairs; trait AUCs per layer and per token, and SAE features.
# Paths and targets come from the plug-in module (traitscope.experiments.backdoor).
from traitscope.experiments import backdoor as backdoor_plugin
from traitscope.experiments.backdoor.settings import (
    BackdoorAnalysisSettings,
    BackdoorDataSettings,
    SAEFeatureSettings,
    SAELayerSettings,
    SAETrainSettings,
)

BACKDOOR = config["experiments"]["backdoor"]
get_backdoor_targets = lambda: backdoor_plugin.targets(BACKDOOR)


if is_enabled("backdoor"):
    EXPERIMENT_TARGETS.append(get_backdoor_targets)

    rule backdoor_data:
        input:
            model=f"results/models/{BACKDOOR['base']}/manifest.json",
        output:
            train=backdoor_plugin.training_data_path(),
            pairs=prompts_path(BACKDOOR["prompt_set"]),
        log:
            "results/logs/backdoor_data.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        params:
            settings=settings_param(BackdoorDataSettings, BACKDOOR),
        shell:
            "traitscope backdoor-data --model {input.model} --settings {params.settings:q} "
            "--train {output.train} --pairs {output.pairs} 2> {log}"

    if BACKDOOR["sae"]["path"] is None:

        rule sae_train:
            input:
                capture=f"results/capture/{BACKDOOR['base']}/{BACKDOOR['sae']['prompt_set']}/capture.json",
            output:
                sae=directory(backdoor_plugin.sae_dir()),
                record=f"{backdoor_plugin.OUT_DIR}/sae_training.json",
                png=report(
                    f"{backdoor_plugin.OUT_DIR}/sae_training.png",
                    caption="../../report/backdoor.rst",
                    category="5 Backdoor detection",
                    subcategory="sparse autoencoder",
                ),
            log:
                "results/logs/sae_train.log",
            benchmark:
                "results/benchmarks/sae_train.tsv"
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            resources:
                gpu=MODEL_GPU,
                mem_mb=8000,
            params:
                settings=settings_param(SAETrainSettings, BACKDOOR["sae"]),
                model=BACKDOOR["base"],
            shell:
                "traitscope sae-train --capture {input.capture} "
                "--settings {params.settings:q} --out {output.sae} --record {output.record} "
                "--png {output.png} --model-name {params.model} 2> {log}"

    else:

        rule sae_evaluate:
            input:
                sae=BACKDOOR["sae"]["path"],
                capture=f"results/capture/{BACKDOOR['base']}/{BACKDOOR['sae']['prompt_set']}/capture.json",
            output:
                record=f"{backdoor_plugin.OUT_DIR}/sae_training.json",
                png=report(
                    f"{backdoor_plugin.OUT_DIR}/sae_training.png",
                    caption="../../report/backdoor.rst",
                    category="5 Backdoor detection",
                    subcategory="sparse autoencoder",
                ),
            log:
                "results/logs/sae_evaluate.log",
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            resources:
                mem_mb=8000,
            params:
                settings=settings_param(SAELayerSettings, BACKDOOR["sae"]),
            shell:
                "traitscope sae-evaluate --sae {input.sae} --capture {input.capture} "
                "--settings {params.settings:q} --record {output.record} --png {output.png} 2> {log}"

    rule backdoor_analysis:
        input:
            **backdoor_plugin.analysis_inputs(BACKDOOR),
        output:
            json=f"{backdoor_plugin.OUT_DIR}/detection_auc.json",
            traits=report(
                f"{backdoor_plugin.OUT_DIR}/trait_comparison.png",
                caption="../../report/backdoor.rst",
                category="5 Backdoor detection",
                subcategory="trait vectors",
            ),
            tokens=report(
                f"{backdoor_plugin.OUT_DIR}/early_detection_tokens.png",
                caption="../../report/backdoor.rst",
                category="5 Backdoor detection",
                subcategory="trait vectors",
            ),
        log:
            "results/logs/backdoor_analysis.log",
        benchmark:
            "results/benchmarks/backdoor_analysis.tsv"
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            variants=f"--base {BACKDOOR['base']} --backdoored {BACKDOOR['backdoored']}",
            settings=settings_param(BackdoorAnalysisSettings, BACKDOOR),
        shell:
            "traitscope backdoor-analysis --pairs {input.pairs} {params.variants} "
            "--projections-base {input.projections_base} --capture-base {input.capture_base} "
            "--projections-backdoored {input.projections_backdoored} "
            "--capture-backdoored {input.capture_backdoored} "
            "--out {output.json} --traits-png {output.traits} --tokens-png {output.tokens} "
            "--train {input.train} --draws {input.draws} --settings {params.settings:q} 2> {log}"

    rule backdoor_sae_features:
        input:
            **backdoor_plugin.sae_features_inputs(BACKDOOR),
        output:
            f"{backdoor_plugin.OUT_DIR}/sae_features.json",
        log:
            "results/logs/backdoor_sae_features.log",
        benchmark:
            "results/benchmarks/backdoor_sae_features.tsv"
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        # a GPU encodes the SAE's own data in seconds (~14 min on a CPU core at full scale)
        resources:
            gpu=MODEL_GPU,
            mem_mb=8000,
        params:
            settings=settings_param(SAEFeatureSettings, BACKDOOR),
        shell:
            "traitscope backdoor-sae-features --sae {input.sae} "
            "--pairs {input.pairs} --capture-base {input.capture_base} "
            "--capture-backdoored {input.capture_backdoored} --sae-capture {input.sae_capture} "
            "--sae-record {input.sae_record} --out {output} --settings {params.settings:q} 2> {log}"
