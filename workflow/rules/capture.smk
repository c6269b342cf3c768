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
    # one thread each: on a small CPU two captures side by side do ~1.2-1.4x the work of one
    # capture on two threads (small matmuls scale poorly); on GPUs and clusters the thread
    # count is the profile's cpus_per_task, or --set-threads capture=N
    threads: 1
    resources:
        gpu=MODEL_GPU,
        mem_mb=16000,
    params:
        settings=get_capture_settings,
    shell:
        "traitscope capture --model {input.model} --prompts {input.prompts} --out {output} "
        "--settings {params.settings:q} 2> {log}"
