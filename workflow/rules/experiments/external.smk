# External datasets: harm detection on HarmBench and on BeaverTails per harm category.
EXTERNAL = config["experiments"]["external"]
EXTERNAL_DIR = "results/external_datasets"


def beavertails_sets():
    """{category: derived prompt set}: one capture job per category, known before any run."""
    bt = EXTERNAL["beavertails"]
    return {c: f"{bt['prompt_set']}.{c.replace(',', '-')}" for c in bt["categories"]}


def get_external_targets():
    out = ["failure_cases.json", "score_distributions.png"]
    if EXTERNAL["harmbench"]:
        out += ["harmbench_results.json", "harmbench_auc.png"]
    if EXTERNAL["beavertails"]:
        out += ["beavertails_results.json", "per_category_auc.png"]
    return [f"{EXTERNAL_DIR}/{name}" for name in out]


def get_external_inputs(wildcards):
    variant, inputs = EXTERNAL["variant"], {}
    if EXTERNAL["harmbench"]:
        hb = EXTERNAL["harmbench"]
        inputs["hb_harmful"] = projections_path(variant, hb["harmful"])
        inputs["hb_harmless"] = projections_path(variant, hb["harmless"])
        inputs["hb_prompts"] = prompts_path(hb["harmful"])
    if EXTERNAL["beavertails"]:
        sets = list(beavertails_sets().values())
        inputs["bt_proj"] = [projections_path(variant, s) for s in sets]
        inputs["bt_prompts"] = [prompts_path(s) for s in sets]
    return inputs


def get_external_args(wildcards, input):
    """CLI options naming every input of the analysis."""
    args = []
    if EXTERNAL["harmbench"]:
        args.append(
            f"--harmbench-harmful {input.hb_harmful} --harmbench-harmless {input.hb_harmless} "
            f"--harmbench-prompts {input.hb_prompts}"
        )
    if EXTERNAL["beavertails"]:
        args += [
            f"--beavertails {proj} {prompts}"
            for proj, prompts in zip(input.bt_proj, input.bt_prompts)
        ]
    return " ".join(args)


if is_enabled("external"):
    EXPERIMENT_TARGETS.append(get_external_targets)
    if EXTERNAL["harmbench"]:
        request_captures(
            [(EXTERNAL["variant"], s) for s in EXTERNAL["harmbench"].values()]
        )
    if EXTERNAL["beavertails"]:
        BT_SETS = beavertails_sets()
        request_captures([(EXTERNAL["variant"], s) for s in BT_SETS.values()])

        rule beavertails_category:
            input:
                prompts_path(EXTERNAL["beavertails"]["prompt_set"]),
            output:
                prompts_path(f"{EXTERNAL['beavertails']['prompt_set']}.{{category}}"),
            log:
                "results/logs/beavertails_category/{category}.log",
            wildcard_constraints:
                category="|".join(s.split(".")[-1] for s in BT_SETS.values()),
            conda:
                "../../../envs/traitscope.yaml"
            threads: 1
            params:
                category=lambda wildcards: next(
                    c
                    for c, s in BT_SETS.items()
                    if s.endswith(f".{wildcards.category}")
                ),
                categories=EXTERNAL["beavertails"]["categories"],
                n=opt("--n", EXTERNAL["beavertails"]["n_per_category"]),
                seed=EXTERNAL["beavertails"]["seed"],
            shell:
                "traitscope beavertails-category --prompts {input} --category {params.category:q} "
                "--categories {params.categories:q} {params.n} --seed {params.seed} --out {output} "
                "2> {log}"

    rule external_analysis:
        input:
            unpack(get_external_inputs),
        output:
            [
                (
                    report(
                        path,
                        caption="../../report/external.rst",
                        category="External datasets",
                    )
                    if path.endswith(".png")
                    else path
                )
                for path in get_external_targets()
            ],
        log:
            "results/logs/external_analysis.log",
        conda:
            "../../../envs/traitscope.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            out_dir=EXTERNAL_DIR,
            inputs=get_external_args,
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
