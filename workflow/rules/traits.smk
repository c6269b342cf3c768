rule trait_responses:
    input:
        model=get_manifest,
        trait=get_trait_file,
    output:
        "results/traits/{model}/{group}/{trait}/responses.parquet",
    log:
        "results/logs/trait_responses/{model}/{group}/{trait}.log",
    benchmark:
        "results/benchmarks/trait_responses/{model}/{group}/{trait}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        max_new_tokens=extraction("max_new_tokens"),
        pairs=extraction("pairs_per_question"),
        n_extraction=opt("--n-extraction", extraction("n_extraction")),
        n_evaluation=opt("--n-evaluation", extraction("n_evaluation")),
        temperature=extraction("temperature"),
        seed=extraction("seed"),
        max_tokens=extraction("max_tokens"),
    shell:
        "traitscope trait-responses --model {input.model} --trait-file {input.trait} "
        "--trait {wildcards.group}/{wildcards.trait} --out {output} "
        "--max-new-tokens {params.max_new_tokens} --pairs-per-question {params.pairs} "
        "{params.n_extraction} {params.n_evaluation} --temperature {params.temperature} "
        "--seed {params.seed} --max-tokens {params.max_tokens} 2> {log}"


rule trait_activations:
    input:
        model=get_manifest,
        responses="results/traits/{model}/{group}/{trait}/responses.parquet",
    output:
        "results/traits/{model}/{group}/{trait}/activations.safetensors",
    log:
        "results/logs/trait_activations/{model}/{group}/{trait}.log",
    benchmark:
        "results/benchmarks/trait_activations/{model}/{group}/{trait}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        pools=" ".join(extraction("pools")),
        max_tokens=extraction("max_tokens"),
    shell:
        "traitscope trait-activations --model {input.model} --responses {input.responses} "
        "--out {output} --pools {params.pools} --max-tokens {params.max_tokens} 2> {log}"


rule trait_vectors:
    input:
        activations="results/traits/{model}/{group}/{trait}/activations.safetensors",
        responses="results/traits/{model}/{group}/{trait}/responses.parquet",
    output:
        vectors="results/traits/{model}/{group}/{trait}/vectors.safetensors",
        meta="results/traits/{model}/{group}/{trait}/vectors.json",
    log:
        "results/logs/trait_vectors/{model}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=extraction("position"),
        probe_c=extraction("probe_c"),
    shell:
        "traitscope trait-vectors --activations {input.activations} --responses {input.responses} "
        "--out {output.vectors} --meta {output.meta} --position {params.position} "
        "--probe-c {params.probe_c} --model-name {wildcards.model} "
        "--trait {wildcards.group}/{wildcards.trait} 2> {log}"


rule trait_evaluation:
    input:
        vectors="results/traits/{model}/{group}/{trait}/vectors.safetensors",
        activations="results/traits/{model}/{group}/{trait}/activations.safetensors",
        responses="results/traits/{model}/{group}/{trait}/responses.parquet",
    output:
        json="results/traits/{model}/{group}/{trait}/evaluation.json",
        png=report(
            "results/traits/{model}/{group}/{trait}/evaluation.png",
            caption="../report/evaluation.rst",
            category="Trait vectors",
        ),
    log:
        "results/logs/trait_evaluation/{model}/{group}/{trait}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        position=extraction("position"),
    shell:
        "traitscope trait-evaluate --vectors {input.vectors} --activations {input.activations} "
        "--responses {input.responses} --out {output.json} --png {output.png} "
        "--position {params.position} --model-name {wildcards.model} "
        "--trait {wildcards.group}/{wildcards.trait} 2> {log}"


rule trait_summary:
    input:
        get_evaluations,
    output:
        "results/traits/{model}/summary.json",
    log:
        "results/logs/trait_summary/{model}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    shell:
        "traitscope trait-summary --out {output} {input} 2> {log}"


rule steering_check:
    input:
        model=get_manifest,
        vectors="results/traits/{model}/{group}/{trait}/vectors.safetensors",
        evaluation="results/traits/{model}/{group}/{trait}/evaluation.json",
        trait=get_trait_file,
    output:
        "results/traits/{model}/{group}/{trait}/steering.json",
    log:
        "results/logs/steering_check/{model}/{group}/{trait}.log",
    benchmark:
        "results/benchmarks/steering_check/{model}/{group}/{trait}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        coefficient=get_steering("coefficient"),
        max_new_tokens=get_steering("max_new_tokens"),
        max_tokens=extraction("max_tokens"),
    shell:
        "traitscope steering-check --model {input.model} --vectors {input.vectors} "
        "--evaluation {input.evaluation} --trait-file {input.trait} --out {output} "
        "--coefficient {params.coefficient} --max-new-tokens {params.max_new_tokens} "
        "--max-tokens {params.max_tokens} 2> {log}"
