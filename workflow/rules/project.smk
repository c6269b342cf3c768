rule project:
    input:
        capture="results/capture/{variant}/{prompt_set}/capture.json",
        vectors=get_base_vectors,
        evaluations=get_base_evaluations,
    output:
        "results/projections/{variant}/{prompt_set}.parquet",
    log:
        "results/logs/project/{variant}/{prompt_set}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        traits=lambda wildcards, input: get_project_traits(wildcards, input),
    shell:
        "traitscope project --capture {input.capture} --variant {wildcards.variant} "
        "--prompt-set {wildcards.prompt_set} {params.traits} --out {output} 2> {log}"
