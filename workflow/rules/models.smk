rule prepare_model:
    input:
        base=get_lora_base_manifest,
    output:
        manifest="results/models/{model}/manifest.json",
    log:
        "results/logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
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
        "traitscope prepare-model --variant {wildcards.model} --spec {params.spec:q} "
        "--out results/models/{wildcards.model} {params.base} 2> {log}"
