rule capture:
    input:
        model="results/models/{variant}/manifest.json",
        prompts="results/prompts/{prompt_set}.parquet",
    output:
        "results/capture/{variant}/{prompt_set}/capture.json",
    log:
        "results/logs/capture/{variant}/{prompt_set}.log",
    benchmark:
        "results/benchmarks/capture/{variant}/{prompt_set}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        settings=get_capture_args,
    shell:
        "traitscope capture --model {input.model} --prompts {input.prompts} --out {output} "
        "{params.settings} 2> {log}"
