rule prepare_model:
    output:
        manifest="results/models/{model}/manifest.json",
    params:
        spec=get_model_spec,
    log:
        "results/logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        mem_mb=16000,
    shell:
        "traitscope prepare-model --variant {wildcards.model} --spec '{params.spec}' "
        "--out results/models/{wildcards.model} 2> {log}"
