rule prepare_model:
    input:
        base=get_lora_base_manifest,
    output:
        manifest="results/models/{variant}/manifest.json",
    log:
        "results/logs/prepare_model/{variant}.log",
    benchmark:
        "results/benchmarks/prepare_model/{variant}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        mem_mb=16000,
    params:
        spec=get_model_spec,
        base=lambda wildcards, input: opt(
            "--base-manifest", input.base[0] if input.base else None
        ),
    shell:
        "traitscope prepare-model --variant {wildcards.variant} --spec {params.spec:q} "
        "--out results/models/{wildcards.variant} {params.base} 2> {log}"
