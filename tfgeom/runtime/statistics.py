"""Uncertainty of every reported figure, and verdicts against fixed criteria: done once, here.

`interval(values, statistic)` is a bootstrap 95% interval over examples
(SciPy's `scipy.stats.bootstrap`, percentile method, 2,000 resamples, seeded);
`auc_interval(negatives, positives)` resamples the two groups independently.
`verdict(estimate, criterion)` reads an interval against a threshold fixed in
advance: `holds` when the whole interval is on the claimed side,
`does not hold` when the whole interval is on the other side, otherwise (or
with fewer than `MIN_EXAMPLES` examples) `inconclusive`.
"""
from typing import NamedTuple, Optional

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
MIN_EXAMPLES = 10  # fewer examples than this: no verdict


class Estimate(NamedTuple):
    """A statistic over examples with its bootstrap interval.

    Fields:
        value: the statistic on all examples (None without examples).
        low: lower end of the 95% interval (None without examples).
        high: upper end.
        n: examples behind it (for an AUC: negatives + positives).
    """

    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int

    def as_dict(self):
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def _bootstrap(samples, statistic, seed):
    from scipy import stats

    result = stats.bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                             vectorized=False, paired=False, random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def interval(values, statistic=np.mean, seed=0):
    """`Estimate` of `statistic` (mean: a fraction for booleans; `np.median`) over `values [N]`, NaNs dropped."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Estimate(None, None, None, 0)
    value = float(statistic(values))
    if len(values) < 2 or np.all(values == values[0]):
        return Estimate(value, value, value, len(values))  # no spread to resample
    low, high = _bootstrap((values,), statistic, seed)
    return Estimate(value, min(low, value), max(high, value), len(values))


def auc(negatives, positives):
    """Probability that a positive scores above a negative (ties count half): the ROC AUC."""
    from scipy.stats import rankdata

    negatives, positives = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    ranks = rankdata(np.concatenate([negatives, positives]))
    n0, n1 = len(negatives), len(positives)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def auc_interval(negatives, positives, seed=0):
    """`Estimate` of the AUC, negatives and positives resampled independently."""
    negatives = np.asarray(negatives, np.float64)
    positives = np.asarray(positives, np.float64)
    n = len(negatives) + len(positives)
    if len(negatives) == 0 or len(positives) == 0:
        return Estimate(None, None, None, n)
    value = auc(negatives, positives)
    if len(negatives) < 2 or len(positives) < 2:
        return Estimate(value, value, value, n)
    low, high = _bootstrap((negatives, positives), auc, seed)
    return Estimate(value, min(low, value), max(high, value), n)


class Criterion(NamedTuple):
    """What a claim needs: the statistic `>` or `<` a threshold (fixed before any measurement).

    Fields:
        side: `">"` (the claim says above) or `"<"`.
        threshold: the value.
    """

    side: str
    threshold: float

    def describe(self, what):
        return f"{what} {self.side} {self.threshold:g}"


HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def verdict(estimate, criterion, min_examples=MIN_EXAMPLES):
    """`holds`, `does not hold` or `inconclusive` for an `Estimate` against a `Criterion`."""
    if estimate.value is None or estimate.n < min_examples:
        return INCONCLUSIVE
    above = estimate.low > criterion.threshold
    below = estimate.high < criterion.threshold
    if criterion.side == ">":
        return HOLDS if above else FAILS if below else INCONCLUSIVE
    return HOLDS if below else FAILS if above else INCONCLUSIVE


def examples_needed(estimate, criterion, min_examples=MIN_EXAMPLES):
    """How many examples a decisive verdict would need at the observed spread, or None if none would do.

    An interval's half-width shrinks as `1/sqrt(n)`, so when the interval straddles the criterion the
    examples needed are `n (w / gap)^2`, `w` the half-width on the criterion's side and `gap` the estimate's
    distance to the criterion (None when the estimate sits on it). A decided estimate needs what it has.
    """
    if estimate.value is None:
        return None
    n = max(int(estimate.n), 1)
    if verdict(estimate, criterion, min_examples) != INCONCLUSIVE:
        return n
    gap = estimate.value - criterion.threshold
    if gap == 0:
        return None
    width = (estimate.value - estimate.low) if gap > 0 else (estimate.high - estimate.value)
    # an interval that only touches the criterion (width = gap) is undecided too: at least one more example
    return max(min_examples, n + 1, int(np.ceil(n * (width / abs(gap)) ** 2)))


def all_of(verdicts):
    """One verdict from several that must all hold (any failure fails; otherwise any doubt is inconclusive)."""
    if FAILS in verdicts:
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


def rank_correlation(a, b):
    """Spearman rank correlation of two `[N]` samples."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def paired_interval(a, b, statistic, seed=0):
    """`Estimate` of `statistic(a, b)` over pairs `(a[i], b[i])` (pairs with a NaN dropped), resampled together."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return Estimate(None, None, None, len(a))
    value = float(statistic(a, b))
    from scipy import stats

    result = stats.bootstrap((a, b), statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                             vectorized=False, paired=True, random_state=np.random.default_rng(seed))
    low, high = (float(v) for v in result.confidence_interval)
    return Estimate(value, min(low, value), max(high, value), len(a))


def listed(values, keep):
    """`[N]` JSON-ready per-example evidence: the values as floats, None where `keep` is False."""
    return [float(v) if k else None for v, k in zip(values, keep)]
