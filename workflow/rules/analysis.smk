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
