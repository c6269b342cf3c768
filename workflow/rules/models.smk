rule prepare_model:
    input:
        base=get_base_manifest,
        adapter=get_trained_adapter,
        template=get_chat_template_file,
    output:
        manifest="results/models/{variant}/manifest.json",
    log:
        "results/logs/prepare_model/{variant}.log",
    benchmark:
        "results/benchmarks/prepare_model/{variant}.tsv"
    priority: 10
    conda:
        "../../envs/traitscope.yaml"
    # first and on one core (GGUF conversion is single-threaded): every model job waits for
    # it, while prompt preparation can run beside it
    threads: 1
    resources:
        mem_mb=16000,
    params:
        spec=get_model_spec,
        base=lambda wildcards, input: opt(
            "--base-manifest", input.base[0] if input.base else None
        ),
        adapter=lambda wildcards, input: opt(
            "--adapter", input.adapter[0] if input.adapter else None
        ),
    shell:
        "traitscope prepare-model --variant {wildcards.variant} --spec {params.spec:q} "
        "--out results/models/{wildcards.variant} {params.base} {params.adapter} 2> {log}"
