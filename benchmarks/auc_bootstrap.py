"""The AUC bootstrap's cost: `auc_with_ci` (the scores made rank codes once, the resamples
counted on them) against the same percentile bootstrap scoring each resample's raw values
(`_auc_along`: each resample searched among the distinct values), as the analyses did before.

The backdoor analysis alone computes ~700 such CIs (3 traits x 2 positions x 30 layers x both
models and their difference) and spent half its time in the search. Prints both times, their
ratio and whether the CIs agree (they must: the AUC reads only the scores' order).

    python benchmarks/auc_bootstrap.py [--n 100] [--repeats 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402

from traitscope.stats.bootstrap import _percentile_bootstrap  # noqa: E402
from traitscope.stats.roc import _auc_along, auc_with_ci  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="positives and negatives each")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples = [(rng.normal(0.5, 1, args.n), rng.normal(0, 1, args.n)) for _ in range(args.repeats)]

    start = time.perf_counter()
    searched = [_percentile_bootstrap((p, n), _auc_along, 2000, 0.95, 0, vectorized=True) for p, n in samples]
    before = time.perf_counter() - start
    start = time.perf_counter()
    coded = [auc_with_ci(p, n, n_boot=2000, seed=0) for p, n in samples]
    after = time.perf_counter() - start

    same = all(np.allclose(s, (c["ci_low"], c["ci_high"])) for s, c in zip(searched, coded))
    print(f"cpu: {cpu_name()[0]}; {args.repeats} CIs of {args.n} vs {args.n}, 2000 resamples")
    print(f"values searched per resample: {before / args.repeats * 1000:.1f} ms a CI")
    print(f"codes made once (auc_with_ci): {after / args.repeats * 1000:.1f} ms a CI")
    print(f"ratio: {before / after:.2f}x; CIs identical: {same}")


if __name__ == "__main__":
    main()
