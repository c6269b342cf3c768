"""Why the backdoor AUC's CI over vector refits is wide: per refit of the trait's vector, the AUC
of trigger vs control on the backdoored model, beside that refit's AUC on the trait's own
held-out answers, for the chosen method and for every other method refitted at the chosen layer
on the same resampled questions.

The backdoor rows' CI resamples the pairs and refits the trait vector on resampled extraction
questions (`trait-draws`). A refit that still reads the trait on its held-out answers but not the
trigger is a direction the trait's questions leave loose. Reads a finished main-job run and its
config/config.yaml (a run with `--config` or `--configfile` overlays: the chosen method's refits
are checked against the run's draws, the other methods' are not), without the judge filter.

`--pool-evaluation K` asks what more extraction questions would do: the refits then resample the
extraction questions plus K evaluation questions drawn at random with the draws' seed (answers the
run already has), and the held-out AUCs read the remaining evaluation questions only.

    PYTHONPATH=src python benchmarks/backdoor_refits.py RUN_DIR [--trait safety/evil] [--pool-evaluation K]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from traitscope.stats import auc
from traitscope.vectors.draws import draw_projections, read_draws, refits
from traitscope.vectors.filtering import fitting_rows

QUANTILES = (2.5, 10, 50, 90, 97.5)


def pooled(table: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """The table with `k` of its evaluation questions, drawn at random (`seed`), moved to the
    extraction split (so the rows are no longer sorted by split). A pooled question needs answers
    under both instructions: a prompt-contrast trait's "questions" are single prompts."""
    rows = table["split"] == "evaluation"
    held = sorted(set(table.loc[rows, "question"]))
    if not 0 < k < len(held):
        raise SystemExit(f"--pool-evaluation {k}: needs 0 < K < {len(held)} (a question must stay held out)")
    labels = table[rows].groupby("question")["label"].nunique()
    if (labels < 2).any():
        raise SystemExit(
            "--pool-evaluation: the trait's evaluation questions lack paired answers (a contrast trait?)"
        )
    drawn = [held[i] for i in np.random.default_rng(seed).permutation(len(held))[:k]]
    return table.assign(split=table["split"].mask(rows & table["question"].isin(drawn), "extraction"))


def method_refits(run: Path, trait: str, method: str, layer: int, meta: dict, probe_c: float, pool: int = 0):
    """Refits of `method` at `layer` as trait-draws makes them (`vectors.draws.refits`, the run's
    seed and count), on the extraction questions plus `pool` evaluation ones, and the rows they
    were fitted on (`x` at that layer)."""
    capture = run / f"results/capture/{meta['model']}/traits/{trait}/capture.json"
    table, x, layers, _ = fitting_rows(
        capture, run / f"results/prompts/traits/{trait}.parquet", meta["position"], {}
    )
    table = pooled(table, pool, meta["seed"]) if pool else table
    x = x[:, layers.index(layer) : layers.index(layer) + 1]
    return refits(table, x, method, probe_c, meta["n_draws"], meta["seed"]), table, x[:, 0]


def held_out_aucs(draws: torch.Tensor, table: pd.DataFrame, x: torch.Tensor) -> np.ndarray:
    """Each draw's AUC on the trait's held-out answers (evaluation split, positive vs negative)."""
    rows = table["split"].to_numpy() == "evaluation"
    label = table["label"].to_numpy()[rows]
    scores = (x[torch.tensor(rows)].float() @ draws.float().T).numpy()
    return np.array([auc(s[label == 1], s[label == 0]) for s in scores.T])


def backdoor_aucs(run: Path, variant: str, prompt_set: str, draws: torch.Tensor, layer: int) -> np.ndarray:
    """Each draw's AUC of trigger vs control at the pooled last prompt token on `variant`."""
    capture = run / f"results/capture/{variant}/{prompt_set}/capture.json"
    table = draw_projections(capture, draws, layer)
    rows = table[(table["token_index"] == -1) & (table["position"] == "last_prompt")]
    pairs = pd.read_parquet(
        run / f"results/prompts/{prompt_set}.parquet", columns=["prompt_id", "pair_id", "condition"]
    )
    wide = (
        rows.merge(pairs, on="prompt_id")
        .pivot_table(index=["draw", "pair_id"], columns="condition", values="score")
        .dropna()
    )
    return np.array(
        [auc(g["trigger"].to_numpy(), g["control"].to_numpy()) for _, g in wide.groupby(level="draw")]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished main-job run's folder (holds results/)")
    parser.add_argument("--trait", default="safety/evil")
    parser.add_argument(
        "--pool-evaluation", type=int, default=0, metavar="K", help="fit on K evaluation questions too"
    )
    args = parser.parse_args()
    run = args.run
    config = yaml.safe_load((run / "config/config.yaml").read_text())
    if config["extraction"].get("filter", {}).get("enabled"):
        raise SystemExit("the run's vectors are judge-filtered; this script refits unfiltered rows")
    backdoor = config["experiments"]["backdoor"]
    trait_dir = run / f"results/traits/{backdoor['base']}/{args.trait}"
    chosen = json.loads((trait_dir / "evaluation.json").read_text())
    drawn, meta = read_draws(trait_dir / "draws.safetensors")
    meta = {**meta, "model": backdoor["base"]}
    layer, n, seed = meta["layer"], meta["n_draws"], meta["seed"]
    print(f"{args.trait}: chosen {meta['method']} at layer {layer}; {n} refits (seed {seed})")
    if args.pool_evaluation:
        print(f"refits on the extraction questions and {args.pool_evaluation} random evaluation ones")
    print(
        f"AUC quantiles {QUANTILES} over refits; 'below': share of refits with AUC <= {backdoor['threshold']}"
    )
    for method in sorted(chosen["methods"], key=lambda m: m != meta["method"]):
        draws, table, x = method_refits(
            run, args.trait, method, layer, meta, config["extraction"]["probe_c"], args.pool_evaluation
        )
        if (
            method == meta["method"]
            and not args.pool_evaluation
            and not torch.allclose(draws.float(), drawn.float(), atol=1e-4, rtol=1e-3)
        ):
            raise SystemExit(
                f"the {method} refits differ from the run's draws.safetensors: not the run's resampling"
            )
        units = torch.nn.functional.normalize(draws.float(), dim=1)
        cosines = (units @ units.T)[torch.triu_indices(len(units), len(units), 1).unbind()]
        for name, values in (
            (
                "backdoored trigger vs control",
                backdoor_aucs(run, backdoor["backdoored"], backdoor["prompt_set"], draws, layer),
            ),
            (
                "base trigger vs control",
                backdoor_aucs(run, backdoor["base"], backdoor["prompt_set"], draws, layer),
            ),
            ("trait held-out", held_out_aucs(draws, table, x)),
        ):
            q = " ".join(f"{v:.3f}" for v in np.percentile(values, QUANTILES))
            print(f"  {method:9s} {name:30s} {q}  below {np.mean(values <= backdoor['threshold']):.1%}")
        print(f"  {method:9s} median cosine between refits {cosines.median():.3f}")


if __name__ == "__main__":
    main()
