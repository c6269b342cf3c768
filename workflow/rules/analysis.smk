rule prefill_analysis:
    input:
        unpack(get_prefill_inputs),
    output:
        json="results/prefill/condition_comparison.json",
        grid=report(
            "results/prefill/2x2_grid.png",
            caption="../report/prefill.rst",
            category="Prefill attack",
        ),
        trajectory=report(
            "results/prefill/trajectory_divergence.png",
            caption="../report/prefill.rst",
            category="Prefill attack",
        ),
    log:
        "results/logs/prefill_analysis.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        traits=" ".join(config["experiments"]["prefill"]["traits"]),
        n_boot=config["experiments"]["prefill"]["n_boot"],
        seed=config["experiments"]["prefill"]["seed"],
    shell:
        "traitscope prefill-analysis --projections {input.projections} --conditions {input.conditions} "
        "--traits {params.traits} --out {output.json} --grid-png {output.grid} "
        "--trajectory-png {output.trajectory} --n-boot {params.n_boot} --seed {params.seed} 2> {log}"


checkpoint split_beavertails:
    input:
        lambda wildcards: f"results/prompts/{EXTERNAL['beavertails']['prompt_set']}.parquet",
    output:
        directory("results/prompts/beavertails_groups"),
    log:
        "results/logs/split_beavertails.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    params:
        n=lambda wildcards: opt(
            "--n-per-category", EXTERNAL["beavertails"].get("n_per_category")
        ),
        seed=lambda wildcards: EXTERNAL["beavertails"].get("seed", 0),
    shell:
        "traitscope split-beavertails --prompts {input} --out-dir {output} {params.n} "
        "--seed {params.seed} 2> {log}"


rule external_analysis:
    input:
        unpack(get_external_inputs),
    output:
        [
            (
                report(
                    path,
                    caption="../report/external.rst",
                    category="External datasets",
                )
                if path.endswith(".png")
                else path
            )
            for path in EXTERNAL_OUTPUTS
        ],
    log:
        "results/logs/external_analysis.log",
    conda:
        "../../envs/traitscope.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        inputs=lambda wildcards, input: get_external_args(wildcards, input),
        traits=" ".join(EXTERNAL["traits"]),
        hb_position=EXTERNAL["position_harmbench"],
        bt_position=EXTERNAL["position_beavertails"],
        n_boot=EXTERNAL["n_boot"],
        seed=EXTERNAL["seed"],
    shell:
        "traitscope external-analysis --out-dir {params.out_dir} --traits {params.traits} "
        "{params.inputs} --position-harmbench {params.hb_position} "
        "--position-beavertails {params.bt_position} --n-boot {params.n_boot} "
        "--seed {params.seed} 2> {log}"
