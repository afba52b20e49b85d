"""The statistics of the claims audit, on two samples of seeds (pandas Series of accuracies in %).

- welch: Welch's two-sided t-test of mean(better) - mean(worse), its verdict and (1 - ALPHA) interval;
- paired: the paired t-test on the seeds both sides ran (per-seed differences): seeds of one pair share
  the split, the teacher and, where a method leaves it, the student's initialisation, so their
  accuracies are correlated and the paired test has more power; the audit's verdict stays Welch's;
- tost: the equivalence test, two one-sided Welch t-tests against the margins -m and +m (Schuirmann's
  TOST): p < ALPHA means the difference lies within ±m;
- hedges_g: the standardised difference (pooled sample std) with Hedges' exact small-sample correction
  J = Γ(df/2) / (√(df/2) Γ((df-1)/2)), df = n1 + n2 - 2;
- seeds_needed: seeds per side for a two-sided two-sample t-test at ALPHA to detect a difference with
  POWER, given a common std: the power is read from the noncentral t distribution (scipy.stats.nct);
- holm: Holm's step-down adjustment of several p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 100  # beyond this many seeds a side, seeds_needed answers None (not worth planning)


@dataclass
class Welch:
    """A test's two-sided p-value, verdict and interval (Welch's, or the paired test's)."""

    p: float
    verdict: str
    ci: tuple[float, float]  # (1 - ALPHA) confidence interval of mean(better) - mean(worse)


def welch(better: pd.Series, worse: pd.Series) -> Welch:
    """The test of the claim mean(better) > mean(worse)."""
    none = (math.nan, math.nan)
    if len(better) == 0 or len(worse) == 0:
        return Welch(math.nan, "not run", none)
    if len(better) < 2 or len(worse) < 2:
        return Welch(math.nan, "inconclusive", none)
    from scipy.stats import ttest_ind

    diff = better.mean() - worse.mean()
    if better.std(ddof=1) == 0 and worse.std(ddof=1) == 0:  # no spread at all: the t statistic is undefined
        return Welch(math.nan, "inconclusive", (diff, diff)) if diff == 0 else \
            Welch(0.0, "confirmed" if diff > 0 else "refuted", (diff, diff))
    test = ttest_ind(better, worse, equal_var=False)
    ci = test.confidence_interval(1 - ALPHA)
    p = float(test.pvalue)
    verdict = "inconclusive" if p >= ALPHA else "confirmed" if diff > 0 else "refuted"
    return Welch(p, verdict, (float(ci.low), float(ci.high)))


def paired(better: pd.Series, worse: pd.Series) -> Welch:
    """The paired t-test of the claim on the seeds both sides ran (Series indexed by seed): the mean
    per-seed difference, its (1 - ALPHA) interval and two-sided p-value."""
    common = better.index.intersection(worse.index)
    if len(common) < 2:
        return Welch(math.nan, "not run" if len(common) == 0 else "inconclusive", (math.nan, math.nan))
    differences = better[common] - worse[common]
    diff = differences.mean()
    if differences.std(ddof=1) == 0:  # the same difference at every seed: the t statistic is undefined
        return Welch(math.nan, "inconclusive", (diff, diff)) if diff == 0 else \
            Welch(0.0, "confirmed" if diff > 0 else "refuted", (diff, diff))
    from scipy.stats import ttest_rel

    test = ttest_rel(better[common], worse[common])
    ci = test.confidence_interval(1 - ALPHA)
    p = float(test.pvalue)
    verdict = "inconclusive" if p >= ALPHA else "confirmed" if diff > 0 else "refuted"
    return Welch(p, verdict, (float(ci.low), float(ci.high)))


def tost(better: pd.Series, worse: pd.Series, margin: float) -> float:
    """The TOST p-value of |mean(better) - mean(worse)| < margin: the larger of the one-sided Welch
    p-values of diff > -margin and diff < +margin (NaN with fewer than 2 seeds a side)."""
    if len(better) < 2 or len(worse) < 2:
        return math.nan
    diff = better.mean() - worse.mean()
    if better.std(ddof=1) == 0 and worse.std(ddof=1) == 0:
        return 0.0 if abs(diff) < margin else 1.0
    from scipy.stats import ttest_ind

    above = ttest_ind(better + margin, worse, equal_var=False, alternative="greater").pvalue
    below = ttest_ind(better - margin, worse, equal_var=False, alternative="less").pvalue
    return float(max(above, below))


def pooled_std(a: pd.Series, b: pd.Series) -> float:
    """√(((n1-1) s1² + (n2-1) s2²) / (n1 + n2 - 2)); a single seed adds nothing to the spread."""
    df = len(a) + len(b) - 2
    if df < 1:
        return math.nan
    squares = sum(((v - v.mean()) ** 2).sum() for v in (a, b) if len(v))
    return math.sqrt(squares / df)


def hedges_g(better: pd.Series, worse: pd.Series) -> float:
    """(mean(better) - mean(worse)) / pooled std, times Hedges' correction J(n1 + n2 - 2)."""
    if len(better) < 2 or len(worse) < 2:
        return math.nan
    spread = pooled_std(better, worse)
    if not spread > 0:
        return math.nan
    df = len(better) + len(worse) - 2
    correction = math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)
    return correction * (better.mean() - worse.mean()) / spread


def power(difference: float, std: float, n: int) -> float:
    """The power of a two-sided two-sample t-test at ALPHA, n seeds a side, common std: P(|T| > t*)
    where T is noncentral t with 2n - 2 degrees of freedom and noncentrality difference / (std √(2/n))."""
    from scipy.stats import nct, t

    df = 2 * n - 2
    critical = t.ppf(1 - ALPHA / 2, df)
    shift = abs(difference) / (std * math.sqrt(2 / n))
    return float(nct.sf(critical, df, shift) + nct.cdf(-critical, df, shift))


def seeds_needed(difference: float, std: float) -> int | None:
    """The fewest seeds a side (at least 2) whose test reaches POWER against `difference`; None when
    the difference or the spread is unknown or zero, or more than MAX_SEEDS would be needed."""
    if not (abs(difference) > 0 and std > 0):  # NaN fails both comparisons
        return None
    for n in range(2, MAX_SEEDS + 1):
        if power(difference, std, n) >= POWER:
            return n
    return None


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values (NaN stays NaN): the k-th smallest of m is multiplied by
    m - k + 1, then made non-decreasing in that order and capped at 1."""
    tested = p.dropna().sort_values()
    m = len(tested)
    adjusted = (tested * [m - k for k in range(m)]).cummax().clip(upper=1.0)
    return adjusted.reindex(p.index)
