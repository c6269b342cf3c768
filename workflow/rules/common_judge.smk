# The judge's DAG helpers: which models and files a judge: section reads (its inputs), its
# command-line arguments, its truth set, and the judge filter's inputs. Included after common.smk.
import glob
import shlex


def truth_files(judge, trait):
    """The trait's file in a judge: section's truth set, where it has one (else none)."""
    path = f"{judge['truth_set']}/{trait}.yaml"
    return [path] if judge["truth_set"] is not None and os.path.isfile(path) else []


def truth_agreement_path(variant, trait):
    """The judge's agreement on the trait's written truth set, where it has one (else None):
    what the judge gate reads, the run's held-out agreement shown beside it."""
    if not truth_files(JUDGE, trait):
        return None
    return f"{trait_dir(variant, trait)}/judge_truth_agreement.json"


def judge_llm_local(judge=JUDGE):
    """Whether a local LLM judge runs: the local backend, or the classifier's local fallback."""
    return judge["backend"] == "local" or (
        judge["backend"] == "classifier" and judge["classifier"]["fallback"] == "local"
    )


def judge_variant(judge=JUDGE):
    return judge["local"]["variant"] or BASE


def judge_reader_manifest(judge=JUDGE):
    """The classifier backend's reader model (embedding features), else None."""
    clf = judge["classifier"]
    if judge["backend"] != "classifier" or clf["features"] != "embedding":
        return None
    return f"results/models/{clf['reader'] or BASE}/manifest.json"


def get_judge_json(judge=JUDGE):
    """A judge: section as JSON for `--judge` (the local judge's variant and the classifier's
    reader and traits resolved; the DAG-only keys left out). It names the API key's variable,
    never a key."""
    keys = ("backend", "min_number_mass", "cache", "coherence_rubric", "openai")
    clf = {
        k: judge["classifier"][k]
        for k in ("features", "training", "references", "fallback")
    }
    return json.dumps(
        {
            **{k: judge[k] for k in keys},
            "local": {**judge["local"], "variant": judge_variant(judge)},
            "classifier": {
                **clf,
                "traits_dir": TRAITS_DIR,
                "reader_manifest": judge_reader_manifest(judge),
            },
        },
        sort_keys=True,
    )


def judge_runs_model(judge=JUDGE):
    """Whether a judge runs a model here (a GPU job on a cluster): a local LLM or a reader."""
    return judge_llm_local(judge) or judge_reader_manifest(judge) is not None


def judge_inputs(judge=JUDGE):
    """What a judge reads: the local LLM judge's and the classifier's reader's prepared
    manifests, and the classifier's written training files with their traits' files and
    reference facts (an edit to one re-judges); nothing for an API judge alone."""
    out = (
        [f"results/models/{judge_variant(judge)}/manifest.json"]
        if judge_llm_local(judge)
        else []
    )
    reader = judge_reader_manifest(judge)
    out += [reader] if reader and reader not in out else []
    if judge["backend"] == "classifier":
        clf = judge["classifier"]
        for path in sorted(glob.glob(f"{clf['training']}/*/*.yaml")):
            name = os.path.splitext(os.path.relpath(path, clf["training"]))[0]
            facts = f"{clf['references']}/{name}.yaml" if clf["references"] else None
            out += [path, f"{TRAITS_DIR}/{name}.yaml"]
            out += [facts] if facts and os.path.isfile(facts) else []
    return out


def get_judge_model(wildcards):
    """The main judge's inputs (judge_inputs)."""
    return judge_inputs()


def judge_model_arg(judge=JUDGE):
    """`--judge-model`: the local LLM judge's manifest, else none (the reader's is in --judge)."""
    if not judge_llm_local(judge):
        return "--judge-model none"
    return f"--judge-model results/models/{judge_variant(judge)}/manifest.json"


def judge_args(judge, flag="--judge"):
    """`--judge JSON --judge-model M` of a judge: section, under another flag for a second judge."""
    model = judge_model_arg(judge).replace("--judge-model", f"{flag}-model")
    return f"{flag} {shlex.quote(get_judge_json(judge))} {model}"


def get_judge_model_arg(wildcards, input):
    return judge_model_arg()


def get_filter_judgements(wildcards):
    if not FILTER["enabled"] or f"{wildcards.group}/{wildcards.trait}" in CONTRAST_POOL:
        return []
    return [
        f"{trait_dir(wildcards.variant, f'{wildcards.group}/{wildcards.trait}')}/judgements.parquet"
    ]


def get_filter_arg(wildcards, input):
    return opt("--filter-judgements", input.filter[0] if input.filter else None)
