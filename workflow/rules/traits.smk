rule trait_prompts:
    input:
        trait=get_trait_file,
        bundled=get_trait_bundled,
    output:
        "results/prompts/traits/{group}/{trait}.parquet",
    log:
        "results/logs/trait_prompts/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        settings=settings_param(TraitPromptSettings, config["extraction"]),
        sources=get_trait_sources_arg,
    shell:
        "traitscope trait-prompts --trait-file {input.trait} --trait {wildcards.group}/{wildcards.trait} "
        "--out {output} --settings {params.settings:q} {params.sources} 2> {log}"


rule trait_vectors:
    input:
        capture="results/capture/{variant}/traits/{group}/{trait}/capture.json",
        prompts="results/prompts/traits/{group}/{trait}.parquet",
        filter=get_filter_judgements,
    output:
        vectors="results/traits/{variant}/{group}/{trait}/vectors.safetensors",
        meta="results/traits/{variant}/{group}/{trait}/vectors.json",
    log:
        "results/logs/trait_vectors/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=get_trait_position,
        settings=settings_param(ExtractionSettings, config["extraction"]),
        filter=get_filter_arg,
    shell:
        "traitscope trait-vectors --capture {input.capture} --prompts {input.prompts} "
        "--out {output.vectors} --meta {output.meta} --position {params.position} "
        "--settings {params.settings:q} --variant {wildcards.variant} "
        "--trait {wildcards.group}/{wildcards.trait} {params.filter} 2> {log}"


rule trait_evaluation:
    input:
        vectors="results/traits/{variant}/{group}/{trait}/vectors.safetensors",
        capture="results/capture/{variant}/traits/{group}/{trait}/capture.json",
        prompts="results/prompts/traits/{group}/{trait}.parquet",
    output:
        json="results/traits/{variant}/{group}/{trait}/evaluation.json",
        png=report(
            "results/traits/{variant}/{group}/{trait}/evaluation.png",
            caption="../report/evaluation.rst",
            category="1 Trait vectors",
            subcategory="{group}/{trait}",
        ),
    log:
        "results/logs/trait_evaluation/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=get_trait_position,
    shell:
        "traitscope trait-evaluation --vectors {input.vectors} --capture {input.capture} "
        "--prompts {input.prompts} --out {output.json} --png {output.png} "
        "--position {params.position} --variant {wildcards.variant} "
        "--trait {wildcards.group}/{wildcards.trait} 2> {log}"


rule trait_draws:
    input:
        capture="results/capture/{variant}/traits/{group}/{trait}/capture.json",
        prompts="results/prompts/traits/{group}/{trait}.parquet",
        evaluation="results/traits/{variant}/{group}/{trait}/evaluation.json",
        filter=get_filter_judgements,
    output:
        "results/traits/{variant}/{group}/{trait}/draws.safetensors",
    log:
        "results/logs/trait_draws/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=get_trait_position,
        settings=settings_param(DrawSettings, config["extraction"]),
        filter=get_filter_arg,
    shell:
        "traitscope trait-draws --capture {input.capture} --prompts {input.prompts} "
        "--evaluation {input.evaluation} --out {output} --position {params.position} "
        "--settings {params.settings:q} {params.filter} 2> {log}"


rule trait_summary:
    input:
        get_evaluations,
    output:
        "results/traits/{variant}/summary.json",
    log:
        "results/logs/trait_summary/{variant}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        settings=settings_param(TraitSummarySettings, config["extraction"]),
    shell:
        "traitscope trait-summary --out {output} --settings {params.settings:q} {input} 2> {log}"


rule steering_check:
    input:
        model=get_manifest,
        vectors="results/traits/{variant}/{group}/{trait}/vectors.safetensors",
        evaluation="results/traits/{variant}/{group}/{trait}/evaluation.json",
        trait=get_trait_file,
        prompts=get_steering_prompts,
    output:
        "results/traits/{variant}/{group}/{trait}/steering.json",
    log:
        "results/logs/steering_check/{variant}/{group}/{trait}.log",
    benchmark:
        "results/benchmarks/steering_check/{variant}/{group}/{trait}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        gpu=MODEL_GPU,
        mem_mb=16000,
    params:
        settings=settings_param(SteeringCheckSettings, config["steering_check"]),
        prompts=lambda wildcards, input: opt("--prompts", input.prompts or None),
    shell:
        "traitscope steering-check --model {input.model} --vectors {input.vectors} "
        "--evaluation {input.evaluation} --trait-file {input.trait} --out {output} "
        "--settings {params.settings:q} {params.prompts} 2> {log}"


rule trait_judgements:
    input:
        capture="results/capture/{variant}/traits/{group}/{trait}/capture.json",
        prompts="results/prompts/traits/{group}/{trait}.parquet",
        trait=get_trait_file,
        judge_model=get_judge_model,
    output:
        "results/traits/{variant}/{group}/{trait}/judgements.parquet",
    log:
        "results/logs/trait_judgements/{variant}/{group}/{trait}.log",
    benchmark:
        "results/benchmarks/trait_judgements/{variant}/{group}/{trait}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        gpu=MODEL_GPU if judge_runs_model() else 0,
        mem_mb=8000,
    params:
        judge=get_judge_json(),
        judge_model=get_judge_model_arg,
        settings=settings_param(JudgementSettings, config["extraction"]),
    shell:
        "traitscope trait-judgements --capture {input.capture} --prompts {input.prompts} "
        "--trait-file {input.trait} --judge {params.judge:q} {params.judge_model} "
        "--settings {params.settings:q} --out {output} 2> {log}"


rule trait_agreement:
    input:
        "results/traits/{variant}/{group}/{trait}/judgements.parquet",
    output:
        "results/traits/{variant}/{group}/{trait}/judge_agreement.json",
    log:
        "results/logs/trait_agreement/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        settings=settings_param(AgreementSettings, JUDGE),
    shell:
        "traitscope trait-agreement --judgements {input} --out {output} "
        "--settings {params.settings:q} 2> {log}"


rule trait_truth_agreement:
    input:
        truth=f"{JUDGE['truth_set']}/{{group}}/{{trait}}.yaml",
        trait=get_trait_file,
        judge_model=get_judge_model,
    output:
        "results/traits/{variant}/{group}/{trait}/judge_truth_agreement.json",
    log:
        "results/logs/trait_truth_agreement/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        gpu=MODEL_GPU if judge_runs_model() else 0,
        mem_mb=8000,
    params:
        judge=get_judge_json(),
        judge_model=get_judge_model_arg,
        settings=settings_param(AgreementSettings, JUDGE),
    shell:
        "traitscope trait-truth-agreement --truth {input.truth} --trait-file {input.trait} "
        "--judge {params.judge:q} {params.judge_model} --settings {params.settings:q} "
        "--out {output} 2> {log}"


rule trait_filter:
    input:
        capture="results/capture/{variant}/traits/{group}/{trait}/capture.json",
        prompts="results/prompts/traits/{group}/{trait}.parquet",
        judgements="results/traits/{variant}/{group}/{trait}/judgements.parquet",
    output:
        "results/traits/{variant}/{group}/{trait}/judge_filter.json",
    log:
        "results/logs/trait_filter/{variant}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=get_trait_position,
        settings=settings_param(ExtractionSettings, config["extraction"]),
    shell:
        "traitscope trait-filter --capture {input.capture} --prompts {input.prompts} "
        "--judgements {input.judgements} --out {output} --position {params.position} "
        "--settings {params.settings:q} 2> {log}"
