"""Judge x persona trait agreement on a finished run: can each judge tell positive- from
negative-instruction answers to held-out questions? (issue 27, item 3)

Per persona trait of the run (prompt-contrast traits have no answers to judge):
- `classifier`: the answer classifier (traitscope.judge.classifier), fitted on the trait's
  extraction-split answers, scored on its evaluation-split answers: held-out AUC with a
  stratified bootstrap CI, CPU-s per judgement (batch and one answer at a time), and, as a
  diagnostic of how much the answers carry the instruction at all, a 5-fold cross-validated
  AUC within the extraction split, folds grouped by question (extraction rows only);
- `llm`: the run's own LLM judge where the run judged the trait (judge_agreement.json, or
  computed from judgements.parquet), its CPU-s per judgement from the rule's benchmark TSV
  (cpu_time over the judgements the log says it computed, model load included).

Nothing is written into the run's folder. The table goes to stdout and to
benchmarks/results/judge_agreement_<cpu>.txt (with a .json beside it).

Usage: PYTHONPATH=src python benchmarks/judge_agreement.py RESULTS [RESULTS ...] [--variant smollm2]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from traitscope.data.traits import contrast_pool
from traitscope.judge.classifier import AnswerClassifier  # noqa: E402
from traitscope.judge.classifier_agreement import answer_table, classifier_agreement  # noqa: E402
from traitscope.judge.settings import AgreementSettings
from traitscope.judge.stages import trait_agreement
from traitscope.settings import from_schema

AGREEMENT = from_schema(AgreementSettings)  # the config's judge.n_boot and judge.seed defaults
N_BOOT, SEED = AGREEMENT.n_boot, AGREEMENT.seed
ONE_AT_A_TIME = 20  # answers scored singly for the per-call cost


def cpu_name() -> tuple[str, str]:
    """(lscpu model name with the vector extensions that matter here, a file-name slug)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", out)
    name = model.group(1).strip() if model else platform.processor() or "cpu"
    flags = (re.search(r"Flags:\s*(.+)", out) or re.search(r"(?s)$", "")).group(0)
    isa = "avx512bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "avx2"
    cores = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M)
    slug = re.sub(r"[^a-z0-9]+", "_", f"{name.split()[-1]}_{isa}".lower()).strip("_")
    return f"{name}, {isa}, {cores.group(1) if cores else '?'} cores", slug


def persona_traits(results: Path) -> list[tuple[str, Path]]:
    """(name, trait file) of every persona trait whose prompt set the run wrote."""
    roots = [results.parent / "resources" / "traits", Path(__file__).parents[1] / "resources" / "traits"]
    out = []
    for prompts in sorted((results / "prompts" / "traits").glob("*/*.parquet")):
        name = f"{prompts.parent.name}/{prompts.stem}"
        trait_file = next((r / f"{name}.yaml" for r in roots if (r / f"{name}.yaml").is_file()), None)
        if trait_file is not None and contrast_pool(trait_file) is None:
            out.append((name, trait_file))
    return out


def extraction_cv_auc(prompts: Path, capture: Path, folds: int = 5) -> float:
    """AUC of out-of-fold scores within the extraction split, folds grouped by question."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    table = answer_table(prompts, capture)
    rows = table[table["split"] == "extraction"].reset_index(drop=True)
    scores = np.zeros(len(rows))
    for fit, held in GroupKFold(n_splits=folds).split(rows, groups=rows["question"]):
        a, b = rows.iloc[fit], rows.iloc[held]
        clf = AnswerClassifier.fit(a["response"], a["label"], a["split"], a["prompt_id"], a["question"])
        scores[held] = clf.score_rows(b["response"], b["prompt_id"], b["question"])
    return float(roc_auc_score(rows["label"], scores))


def alternatives_cv(prompts: Path, capture: Path, folds: int = 5) -> dict[str, float]:
    """The same grouped CV within the extraction split for other feature sets and C: is the
    classifier's ceiling a setting, or the answers? (extraction rows only; nothing is chosen)"""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import FeatureUnion, make_pipeline

    def words() -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)

    def chars() -> TfidfVectorizer:
        return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)

    table = answer_table(prompts, capture)
    rows = table[table["split"] == "extraction"].reset_index(drop=True)
    settings = {
        "words C=1": (lambda: words(), 1.0),
        "chars C=1": (lambda: chars(), 1.0),
        "both C=0.1": (lambda: FeatureUnion([("w", words()), ("c", chars())]), 0.1),
        "both C=10": (lambda: FeatureUnion([("w", words()), ("c", chars())]), 10.0),
    }
    out = {}
    for name, (features, c) in settings.items():
        model = make_pipeline(features(), LogisticRegression(C=c, max_iter=5000, random_state=SEED))
        scores = cross_val_predict(
            model,
            rows["response"],
            rows["label"],
            groups=rows["question"],
            cv=GroupKFold(n_splits=folds),
            method="predict_proba",
        )[:, 1]
        out[name] = float(roc_auc_score(rows["label"], scores))
    return out


def clustered_ci(scores: Path, n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% percentile CI of the held-out AUC resampling questions, not answers: each question's
    answers (its pairs, both labels) are not independent, so the row bootstrap the gate reads
    may be too narrow."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    held = pd.read_parquet(scores)
    groups = [g for _, g in held.groupby("question")]
    rng = np.random.default_rng(SEED)
    aucs = []
    for _ in range(n_boot):
        sample = pd.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if sample["label"].nunique() == 2:
            aucs.append(roc_auc_score(sample["label"], sample["trait_score"]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def one_at_a_time(prompts: Path, capture: Path) -> float:
    """CPU-s of scoring one held-out answer per call (how a loop judging as it goes would)."""
    table = answer_table(prompts, capture)
    fit = table[table["split"] == "extraction"]
    held = table[table["split"] == "evaluation"].head(ONE_AT_A_TIME)
    clf = AnswerClassifier.fit(fit["response"], fit["label"], fit["split"], fit["prompt_id"], fit["question"])
    t0 = time.process_time()
    for r in held.itertuples():
        clf.score_rows([r.response], [r.prompt_id], [r.question])
    return (time.process_time() - t0) / max(len(held), 1)


def llm_judge(results: Path, variant: str, name: str) -> dict | None:
    folder = results / "traits" / variant / name
    agreement, judgements = folder / "judge_agreement.json", folder / "judgements.parquet"
    if agreement.is_file():
        row = json.loads(agreement.read_text())
    elif judgements.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            row = trait_agreement(judgements, Path(tmp) / "a.json", AGREEMENT)
    else:
        return None
    tsv = results / "benchmarks" / "trait_judgements" / variant / f"{name}.tsv"
    log = results / "logs" / "trait_judgements" / variant / f"{name}.log"
    computed = re.findall(r'"computed": (\d+)', log.read_text()) if log.is_file() else []
    if tsv.is_file() and computed and int(computed[-1]) > 0:
        header, values = tsv.read_text().splitlines()[:2]
        cpu = float(dict(zip(header.split("\t"), values.split("\t")))["cpu_time"])
        row["cpu_seconds_per_judgement"] = cpu / int(computed[-1])
        row["cpu_note"] = (
            f"rule cpu_time {cpu:.1f} s over {computed[-1]} computed judgements, model load included"
        )
    return row


def fmt(row: dict | None) -> str:
    if row is None or row.get("auc") is None:
        return "n/a" if row is None else f"no AUC ({row.get('reason')})"
    return f"{row['auc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="a finished run's results folder")
    parser.add_argument("--variant", default="smollm2")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    cpu, slug = cpu_name()
    lines = [f"judge agreement, held-out (evaluation-split) answers; CPU: {cpu}", ""]
    record: dict = {"cpu": cpu, "runs": {}}
    for results in args.results:
        results = results.resolve()
        commit = subprocess.run(
            ["git", "-C", str(results.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        lines += [f"run: {results} (variant {args.variant}, checkout at {commit or 'unknown commit'})", ""]
        head = (
            f"{'judge':<11} {'trait':<21} {'AUC [95% CI]':<24} {'n pos/neg':<10} {'CPU-s/judgement':<28} note"
        )
        lines += [head, "-" * len(head)]
        rows = record["runs"][str(results)] = {}
        for name, _ in persona_traits(results):
            prompts = results / "prompts" / "traits" / f"{name}.parquet"
            capture = results / "capture" / args.variant / "traits" / name / "capture.json"
            if not capture.is_file():
                lines.append(f"{'classifier':<11} {name:<21} {'n/a (not captured yet)'}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                scores = Path(tmp) / "scores.parquet"
                clf = classifier_agreement(prompts, capture, None, AGREEMENT, judgements=scores)
                clf["question_clustered_ci"] = clustered_ci(scores)
            clf["extraction_cv_auc"] = extraction_cv_auc(prompts, capture)
            clf["cpu_seconds_one_at_a_time"] = one_at_a_time(prompts, capture)
            clf["extraction_cv_auc_alternatives"] = alternatives_cv(prompts, capture)
            cost = f"{clf['cpu_seconds_per_judgement']:.1e} (1 by 1 {clf['cpu_seconds_one_at_a_time']:.1e})"
            low, high = clf["question_clustered_ci"]
            pairs = clf["n_fit"] // (2 * clf["n_fit_questions"])
            note = f"questions {clf['n_fit_questions']}+{clf['n_evaluation_questions']}, {pairs} pairs each; "
            note += f"question-clustered CI [{low:.3f}, {high:.3f}]; "
            note += f"fit {clf['fit_cpu_seconds']:.2f} CPU-s on {clf['n_fit']}; extraction CV AUC "
            note += f"{clf['extraction_cv_auc']:.3f} (other settings: "
            note += ", ".join(f"{k} {v:.2f}" for k, v in clf["extraction_cv_auc_alternatives"].items()) + ")"
            n = f"{clf['n_pos']}/{clf['n_neg']}"
            lines.append(f"{'classifier':<11} {name:<21} {fmt(clf):<24} {n:<10} {cost:<28} {note}")
            llm = llm_judge(results, args.variant, name)
            rows[name] = {"classifier": clf, "llm": llm}
            if llm is not None:
                per = llm.get("cpu_seconds_per_judgement")
                n = f"{llm.get('n_pos', '?')}/{llm.get('n_neg', '?')}"
                cost = "n/a" if per is None else f"{per:.2f}"
                lines.append(
                    f"{'llm':<11} {name:<21} {fmt(llm):<24} {n:<10} {cost:<28} {llm.get('cpu_note', '')}"
                )
        lines.append("")
    lines += [
        "questions A+B, k pairs each: A extraction questions (fitted on), B held-out questions, each",
        "answered under k instruction pairs (both polarities).",
        "classifier: TF-IDF word 1-2 + char 2-5 grams, logistic regression C=1 seed 0, fitted on the",
        "extraction split's answers only; AUC: positive- vs negative-instruction answers to the",
        f"evaluation split's questions, stratified percentile bootstrap ({N_BOOT}, seed {SEED}).",
        "CPU-s: process CPU time (time.process_time) while another job shared the 2 cores.",
        "question-clustered CI: the same AUC, questions resampled (rows within a question are not",
        "independent; the gate reads the row CI).",
        "extraction CV AUC: 5-fold, grouped by question, within the extraction split (diagnostic: do",
        "the answers carry the instruction at all?); other settings: the same CV for words only, chars",
        "only, and both at C=0.1 and C=10 (nothing is chosen from them). Fit CPU-s of the first trait",
        "includes importing scikit-learn. 1 by 1: one answer per score call.",
    ]
    text = "\n".join(lines)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"judge_agreement_{slug}.txt").write_text(text + "\n")
    (args.out_dir / f"judge_agreement_{slug}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
