rule finetune:
    input:
        model=get_finetune_base_manifest,
        data=get_finetune_data,
    output:
        adapter=directory("results/finetune/{variant}/adapter"),
        loss="results/finetune/{variant}/loss.json",
        png=report(
            "results/finetune/{variant}/loss.png",
            caption="../report/finetune.rst",
            category="7 Finetuned variants",
            subcategory="{variant}",
        ),
    log:
        "results/logs/finetune/{variant}.log",
    benchmark:
        "results/benchmarks/finetune/{variant}.tsv"
    # among a run's longest jobs, each heading a chain (prepare, capture, analysis): started as
    # soon as their data exist, they overlap the rest instead of ending the run alone
    priority: 5
    conda:
        "../../envs/traitscope.yaml"
    # one thread each, as capture: on a small CPU model jobs run side by side
    threads: 1
    resources:
        gpu=MODEL_GPU,
        mem_mb=16000,
    params:
        settings=get_finetune_settings,
    shell:
        "traitscope finetune --model {input.model} --data {input.data} "
        "--out results/finetune/{wildcards.variant} --settings {params.settings:q} 2> {log}"
