rule capture:
    input:
        model="results/models/{variant}/manifest.json",
        prompts=get_capture_prompts,
        evaluations=get_base_evaluations,
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
        "--layers-from {input.evaluations} {params.settings} 2> {log}"
