"""Statistics over seeds: mean with a Student-t interval, and paired differences with a verdict."""

import math

import numpy as np
from scipy import stats

# Differences this small are float rounding of equal values (0.0115 - 0.0115 = 1e-16), not spread.
TIE = 1e-12


def mean_std_ci(values, confidence: float = 0.95) -> dict:
    """n, mean, sample std (ddof=1) and the t-interval mean +/- t_{n-1} * std / sqrt(n).
    With one value the spread is unknown: std and interval are None, not 0."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None, "values": values}
    std = float(np.std(values, ddof=1))
    if std <= TIE or math.isnan(std):  # scipy's interval is NaN for zero spread; it is the point itself
        low = high = mean
    else:
        low, high = (float(x) for x in stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n)))
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high, "values": values}


def paired_difference(values, baseline, higher_is_better: bool = True, confidence: float = 0.95) -> dict:
    """values[i] - baseline[i] (the same seed, so the same data order and initialisation), its mean
    with a t-interval, and a verdict from the interval alone: "better" / "worse" when it excludes 0
    on that side (in the metric's direction), else "no detectable difference at N seeds"."""
    if len(values) != len(baseline):
        raise ValueError(f"paired values need the same seeds: {len(values)} vs {len(baseline)}")
    diff = mean_std_ci([a - b for a, b in zip(values, baseline)], confidence)
    diff["verdict"] = verdict(diff, higher_is_better)
    return diff


def verdict(diff: dict, higher_is_better: bool = True) -> str:
    n = diff["n"]
    if n < 2:
        return f"not enough seeds (n={n})"
    if any(math.isnan(x) for x in (diff["mean"], diff["ci_low"], diff["ci_high"])):
        return "undefined (a run's metric is NaN)"
    if diff["std"] <= TIE:  # e.g. 10/872 more dev examples right at both seeds: a collapsed interval
        if abs(diff["mean"]) <= TIE:
            return f"no detectable difference at {n} seeds"
        return f"the same difference at all {n} seeds: spread unknown"
    if diff["ci_low"] > 0:
        return "better" if higher_is_better else "worse"
    if diff["ci_high"] < 0:
        return "worse" if higher_is_better else "better"
    return f"no detectable difference at {n} seeds"


def least_significant_difference(groups, confidence: float = 0.95) -> dict | None:
    """Fisher's least significant difference between two cells' means, from the seed-to-seed spread
    pooled over every cell with 2+ values (one-way ANOVA's within-group variance):
    t_{1-a/2, df} * s_pooled * sqrt(2 / n), n the cells' common seed count (the smallest, if they
    differ). Two means closer than this are not told apart at that confidence. None: no cell has
    two values, so the noise is unknown."""
    groups = [[float(v) for v in g] for g in groups if len(g) >= 2]
    if not groups:
        return None
    df = sum(len(g) - 1 for g in groups)
    pooled = math.sqrt(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / df)
    n = min(len(g) for g in groups)
    lsd = float(stats.t.ppf(0.5 + confidence / 2, df)) * pooled * math.sqrt(2 / n)
    return {"pooled_std": pooled, "df": df, "seeds": n, "lsd": lsd}


def format_mean_std(s: dict, fmt: str = ".4f") -> str:
    if s["std"] is None:
        return f"{s['mean']:{fmt}} (n=1)"
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"


def format_interval(s: dict, fmt: str = "+.3f") -> str:
    """"+0.012 [-0.004, +0.028]": a mean with its interval, for differences."""
    if s["std"] is None:
        return f"{s['mean']:{fmt}} (n=1)"
    return f"{s['mean']:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"
