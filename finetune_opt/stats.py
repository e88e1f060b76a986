"""Summary statistics over seeds: mean, sample std and a Student-t confidence interval."""

import math

from scipy import stats


def mean_std_ci(values, confidence: float = 0.95) -> dict:
    """n, mean, sample std (ddof=1) and the t-interval mean +/- t_{n-1} * std / sqrt(n).
    With one value the spread is unknown: std and interval are None, not 0."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None, "values": values}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "values": values}


def format_mean_std(s: dict, fmt: str = ".4f") -> str:
    if s["std"] is None:
        return f"{s['mean']:{fmt}} (n=1)"
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"
