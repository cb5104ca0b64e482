"""Reference for igpo's interval arithmetic (engine/src/report/stats.rs).

Writes tools/reference/intervals.json: Student-t quantiles, and the
summary (mean, sample std, standard error, 95 % interval) and paired
comparison of fixed samples, all computed by scipy. Run:

    python3 tools/reference/intervals.py > tools/reference/intervals.json
"""
import json
import math

import numpy as np
import scipy
from scipy import stats

SAMPLES = {
    "five_seeds": [0.712, 0.768, 0.735, 0.801, 0.744],
    "two": [0.5, 0.9],
    "ten": [0.31, 0.29, 0.35, 0.4, 0.27, 0.33, 0.38, 0.3, 0.36, 0.32],
    "with_negatives": [-1.25, 0.5, 2.0, -0.75, 0.0, 1.5],
}
# Paired comparisons: a small effect, a strong one (tiny p), none (p near 1).
PAIRS = {
    "small": {"a": [0.712, 0.768, 0.735, 0.801, 0.744], "b": [0.701, 0.745, 0.742, 0.760, 0.731]},
    "strong": {"a": [0.91, 0.93, 0.92, 0.94, 0.95, 0.93], "b": [0.51, 0.52, 0.50, 0.53, 0.52, 0.54]},
    "none": {"a": [0.5, 0.6, 0.7, 0.4], "b": [0.6, 0.5, 0.4, 0.7]},
}


def summary(xs):
    a = np.asarray(xs, dtype=np.float64)
    n = len(a)
    mean = float(a.mean())
    sd = float(a.std(ddof=1))
    se = sd / math.sqrt(n)
    lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=se)
    return {"n": n, "mean": mean, "sd": sd, "se": se, "lo": float(lo), "hi": float(hi)}


def main():
    quantiles = [
        {"p": p, "df": df, "t": float(stats.t.ppf(p, df))}
        for p in (0.975, 0.95, 0.995, 0.6)
        for df in (1, 2, 3, 4, 5, 7, 9, 19, 29, 99, 1000, 100000)
    ]
    paired = {}
    for name, pair in PAIRS.items():
        a, b = np.asarray(pair["a"]), np.asarray(pair["b"])
        paired[name] = {**pair, **summary(list(a - b)), "p_value": float(stats.ttest_rel(a, b).pvalue)}
    out = {
        "scipy": scipy.__version__,
        "t_quantiles": quantiles,
        "samples": {k: {"values": v, **summary(v)} for k, v in SAMPLES.items()},
        "paired": paired,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
