rule prep_prompts:
    input:
        get_prep_inputs,
    output:
        "results/prompts/{prompt_set}.parquet",
    log:
        "results/logs/prep_prompts/{prompt_set}.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        spec=lambda wildcards, input: get_prompt_spec(wildcards, input),
        mirror=get_mirror_arg(),
    shell:
        "traitscope prep --spec {params.spec:q} --out {output} {params.mirror} "
        "--cache-dir results/cache 2> {log}"
