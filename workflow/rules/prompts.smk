rule prep_prompts:
    input:
        match=get_prompt_match,
        source=get_prompt_source,
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


# A registered dataset file copied under results/data/, so a config can name it as a path (a
# finetune's training set: data: results/data/<dataset>/<file>)
rule dataset_file:
    output:
        "results/data/{dataset}/{file}",
    log:
        "results/logs/dataset_file/{dataset}/{file}.log",
    wildcard_constraints:
        dataset=NAME,
        file=NAME,
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        mirror=get_mirror_arg(),
    shell:
        "traitscope dataset-file --dataset {wildcards.dataset} --file {wildcards.file} "
        "--out {output} {params.mirror} --cache-dir results/cache 2> {log}"
