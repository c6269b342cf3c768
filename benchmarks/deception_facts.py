"""Does the reference-facts scorer read deception out of sample? (issue 27, item 3)

Why: the facts scorer (traitscope.judge.references) reads deception's truth set at 0.92-0.93,
but the truth set's facts were written by the author of its answers, after reading some of
them. The confirmation set (`benchmarks/data/deception_confirm.yaml`, 24 + 24 answers to
questions in none of the trait's lists, written in session 17 before any facts existed) had
its facts written from its questions alone (`deception_confirm_facts.yaml`), committed before
this scored it. Nothing here is tuned: the scorers are fitted on the training set as the
classifier backend fits them.

Per judge: AUC with a stratified bootstrap 95% CI on the confirmation set and on the truth set.
Judges: `facts` alone; the backend's classifiers alone (`tfidf`, `emb-smollm2`); each averaged
with `facts` (what `judge.backend: classifier` scores for a trait with facts).

Usage: PYTHONPATH=src python benchmarks/deception_facts.py --reader SMOLLM2_MANIFEST.json
       [--out benchmarks/results/deception_facts_<cpu>.txt]  (and .json beside it)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402
from judge_deception import confirm_table  # noqa: E402
from judge_written import auc, fmt  # noqa: E402

from traitscope.judge.references import ReferenceScorer, load_references  # noqa: E402
from traitscope.judge.truth_set import training_table, truth_table  # noqa: E402
from traitscope.judge.written_judge import WrittenJudge  # noqa: E402

ROOT = Path(__file__).parents[1]
TRAIT = "alignment/deception"
DATA = Path(__file__).parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", required=True, help="SmolLM2's manifest.json (the default reader)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    trait_file = ROOT / "resources" / "traits" / f"{TRAIT}.yaml"
    facts_file = ROOT / "resources" / "judge_references" / f"{TRAIT}.yaml"
    facts = load_references(facts_file, trait_file)
    confirm_facts = {
        i["question"]: i["fact"]
        for i in yaml.safe_load((DATA / "deception_confirm_facts.yaml").read_text())["items"]
    }
    train = training_table(ROOT / "resources" / "judge_train" / f"{TRAIT}.yaml", trait_file)
    truth = truth_table(ROOT / "resources" / "judge_truth" / f"{TRAIT}.yaml", trait_file)
    confirm = confirm_table()
    sets = {
        name: (t["question"].tolist(), t["response"].tolist(), t["label"].to_numpy())
        for name, t in (("confirmation", confirm), ("truth", truth))
    }
    scorer = ReferenceScorer.fit(
        {**facts, **confirm_facts},
        facts_file,
        train["question"].tolist(),
        train["response"].tolist(),
        train["label"],
    )
    rubric = yaml.safe_load(trait_file.read_text())["judge_rubric"]
    judges = {
        name: WrittenJudge(
            {
                "features": features,
                "training": str(ROOT / "resources" / "judge_train"),
                "traits_dir": str(ROOT / "resources" / "traits"),
                "references": None,
                "reader_manifest": args.reader,
            }
        )
        for name, features in (("tfidf", "tfidf"), ("emb-smollm2", "embedding"))
    }
    cpu, slug = cpu_name()
    lines = [
        f"deception judges with reference facts; CPU: {cpu}",
        "",
        f"{'judge':<18} {'confirmation AUC [95% CI]':<26} truth AUC [95% CI]",
    ]
    scores = {}
    for set_name, (q, a, _) in sets.items():
        scores[("facts", set_name)] = scorer.score(q, a)
        for name, judge in judges.items():
            own = judge.score(rubric, q, a)
            scores[(name, set_name)] = own
            scores[(f"{name}+facts", set_name)] = (own + scores[("facts", set_name)]) / 2
    rows = []
    for name in ("facts", *judges, *(f"{n}+facts" for n in judges)):
        rows.append({"judge": name, **{s: auc(scores[(name, s)], sets[s][2]) for s in sets}})
        lines.append(f"{name:<18} {fmt(rows[-1]['confirmation']):<26} {fmt(rows[-1]['truth'])}")
    lines += [
        "",
        f"confirmation: {len(sets['confirmation'][2]) // 2} + {len(sets['confirmation'][2]) // 2} answers "
        "(benchmarks/data/deception_confirm.yaml), facts written from its questions alone before scoring; "
        f"truth: {len(truth) // 2} + {len(truth) // 2} (resources/judge_truth). Every scorer fitted on "
        "resources/judge_train only; stratified bootstrap 95% CI (2000, seed 0). emb-smollm2+facts is "
        "the default judge's deception score.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or Path(__file__).parent / "results" / f"deception_facts_{slug}.txt"
    out.write_text(text)
    record = {"cpu": cpu, "default": "emb-smollm2+facts", "rows": rows, "note": lines[-1]}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
