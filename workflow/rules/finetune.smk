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
            category="Finetuned variants",
        ),
    log:
        "results/logs/finetune/{variant}.log",
    benchmark:
        "results/benchmarks/finetune/{variant}.tsv"
    conda:
        "../../envs/traitscope.yaml"
    # two threads: on 2 AVX2 cores two one-thread finetunes side by side were slower
    # (123 s and 117 s) than two-thread ones in turn (72 s, 64 s)
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        settings=get_finetune_settings,
    shell:
        "traitscope finetune --model {input.model} --data {input.data} "
        "--out results/finetune/{wildcards.variant} --settings {params.settings:q} 2> {log}"
