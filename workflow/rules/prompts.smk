rule prep_prompts:
    input:
        match=get_prompt_match,
    output:
        "results/prompts/{prompt_set}.parquet",
    log:
        "results/logs/prep_prompts/{prompt_set}.log",
    wildcard_constraints:
        prompt_set=CONFIGURED_SETS,
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        spec=get_prompt_spec,
        mirror=get_mirror_arg(),
        match=get_match_arg,
    shell:
        "traitscope prep-prompts --spec {params.spec:q} --out {output} {params.mirror} {params.match} "
        "--cache-dir results/cache 2> {log}"
