"""Paired statistics for comparing models on the same images: the Wilcoxon signed-rank test,
a seeded bootstrap confidence interval of the mean, effect sizes and Holm's correction.

- :func:`wilcoxon_test`: two-sided Wilcoxon signed-rank test of paired values (``scipy.stats.wilcoxon``),
  zero differences dropped (Wilcoxon's convention), tied ``|differences|`` given average ranks; the
  method is exact when it can be (see :func:`wilcoxon_test`) and named in the result;
- :func:`bootstrap_ci`: percentile bootstrap confidence interval of a mean (numpy, seeded);
- :func:`rank_biserial` (matched-pairs rank-biserial correlation) and :func:`standardised_mean_difference`
  (mean / sd of the differences, Cohen's d_z): effect sizes;
- :func:`holm`: Holm's step-down adjusted p-values (family-wise error rate);
- :func:`paired_comparison`: all of the above for two paired samples.

Example:
    >>> r = paired_comparison([3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [1.0, 1.5, 2.0, 2.6, 3.1, 3.3], n_boot=2000, seed=0)
    >>> r["n"], round(r["mean_difference"], 3), round(r["p"], 5), r["rank_biserial"], r["test"]
    (6, 3.25, 0.03125, 1.0, 'exact')
    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["WILCOXON_EXACT_MAX_N", "PERMUTATION_MAX_N", "bootstrap_ci", "holm", "min_attainable_p", "paired_comparison",
           "rank_biserial", "standardised_mean_difference", "wilcoxon_test"]

#: largest number of non-zero differences for the exact null distribution (no ties, no zeros)
WILCOXON_EXACT_MAX_N = 50
#: largest sample for the exact sign-flip permutation test (all 2**n sign patterns) with ties or zeros
PERMUTATION_MAX_N = 13


def _differences(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and of one length, got shapes {a.shape} and {b.shape}")
    return a - b


def _signed_rank_sums(d: np.ndarray) -> tuple[float, float]:
    """``(R+, R-)``: sums of the ranks of ``|d|`` (average ranks for ties) over positive and negative
    differences, zeros dropped."""
    from scipy.stats import rankdata

    d = d[d != 0]
    if d.size == 0:
        return 0.0, 0.0
    ranks = rankdata(np.abs(d))
    return float(ranks[d > 0].sum()), float(ranks[d < 0].sum())


def min_attainable_p(n: int) -> float:
    """The smallest two-sided p-value the signed-rank test can give with ``n`` non-zero differences
    (all of one sign): ``2 / 2**n``. Below 0.05 only from ``n >= 6``.

    >>> min_attainable_p(3), min_attainable_p(6)
    (0.25, 0.03125)
    """
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def wilcoxon_test(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``).

    Method: ``exact`` (the exact null distribution) with at most :data:`WILCOXON_EXACT_MAX_N` differences and
    neither zeros nor ties; ``permutation`` (all ``2**n`` sign flips, exact) with ties or zeros and at most
    :data:`PERMUTATION_MAX_N` pairs; else ``normal`` (normal approximation with tie correction and continuity
    correction). Returns ``{"statistic": min(R+, R-), "p", "test", "n_nonzero", "r_plus", "r_minus"}``; with no
    non-zero difference there is nothing to test: ``p`` is None and ``test`` says why.

    >>> r = wilcoxon_test([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0] * 10)
    >>> r["statistic"], r["p"] == 2 / 2**10, r["test"]
    (0.0, True, 'exact')
    """
    from scipy import stats

    d = _differences(a, b)
    d = d[np.isfinite(d)]
    r_plus, r_minus = _signed_rank_sums(d)
    nonzero = d[d != 0]
    result = {"statistic": min(r_plus, r_minus), "n_nonzero": int(nonzero.size), "r_plus": r_plus, "r_minus": r_minus}
    if nonzero.size == 0:
        return {**result, "p": None, "test": "none: no non-zero difference"}
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    if not ties and nonzero.size == d.size and d.size <= WILCOXON_EXACT_MAX_N:
        method, name = "exact", "exact"
    elif d.size <= PERMUTATION_MAX_N:
        method, name = stats.PermutationMethod(n_resamples=2**d.size), "permutation"
    else:
        method, name = "asymptotic", "normal"
    test = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method)
    return {**result, "p": float(min(1.0, test.pvalue)), "test": name}


def bootstrap_ci(values, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (``n_boot`` resamples with
    replacement, ``numpy.random.default_rng(seed)``). NaN bounds for an empty sample; one value gives a
    zero-width interval (a bootstrap cannot tell its uncertainty).

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> low, high = bootstrap_ci([0.1, 0.4, 0.35, 0.8, 0.5], seed=1)
    >>> bool(low < 0.43 < high)
    True
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def rank_biserial(a, b) -> float:
    """Matched-pairs rank-biserial correlation of ``a - b``: ``(R+ - R-) / (R+ + R-)``, zeros dropped, in
    [-1, 1] (1: every non-zero difference positive). NaN with no non-zero difference (Kerby 2014).

    >>> rank_biserial([2, 3, 4, 0], [1, 1, 1, 4])  # ranks of |1, 2, 3, -4|: (6 - 4) / 10
    0.2
    """
    r_plus, r_minus = _signed_rank_sums(_differences(a, b))
    total = r_plus + r_minus
    return (r_plus - r_minus) / total if total else math.nan


def standardised_mean_difference(a, b) -> float:
    """Mean of ``a - b`` over its standard deviation (``ddof=1``): Cohen's d_z for paired samples. NaN with
    fewer than two pairs or when every difference is the same.

    >>> standardised_mean_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])  # differences 1, 2, 3: mean 2, sd 1
    2.0
    """
    d = _differences(a, b)
    if d.size < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    return float(np.mean(d)) / sd if sd > 0 else math.nan


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sorted ascending, the i-th (from 0) of m
    is ``max over j <= i of min(1, (m - j) p_(j))``; reject where adjusted p <= alpha. Controls the
    family-wise error rate for any dependence between the tests (Holm 1979). scipy has no Holm.

    >>> holm([0.01, 0.02, 0.03, 0.04, 0.05])  # R: p.adjust(p, "holm")
    [0.05, 0.08, 0.09, 0.09, 0.09]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [round(float(v), 12) for v in out]


def paired_comparison(a, b, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Compare paired samples ``a`` and ``b`` (e.g. one metric of two models on the same images); pairs with
    a non-finite value are dropped (``n_dropped``). Differences are ``a - b``.

    Returns ``n``, ``n_dropped``, ``mean_a``, ``mean_b``, ``mean_difference`` with its bootstrap interval
    (``ci_low``, ``ci_high``, ``confidence``, ``n_boot``, ``seed``), ``median_difference``, the Wilcoxon
    test (:func:`wilcoxon_test`: ``statistic``, ``p``, ``test``, ``n_nonzero``), ``min_attainable_p`` and
    the effect sizes ``rank_biserial`` and ``d_z``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _differences(a, b)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    low, high = bootstrap_ci(d, n_boot=n_boot, confidence=confidence, seed=seed)
    test = wilcoxon_test(a, b)
    nan = math.nan
    return {
        "n": int(d.size), "n_dropped": int((~keep).sum()),
        "mean_a": float(a.mean()) if d.size else nan, "mean_b": float(b.mean()) if d.size else nan,
        "mean_difference": float(d.mean()) if d.size else nan, "median_difference": float(np.median(d)) if d.size else nan,
        "ci_low": low, "ci_high": high, "confidence": confidence, "n_boot": n_boot, "seed": seed,
        "statistic": test["statistic"], "p": test["p"], "test": test["test"], "n_nonzero": test["n_nonzero"],
        "min_attainable_p": min_attainable_p(test["n_nonzero"]),
        "rank_biserial": rank_biserial(a, b), "d_z": standardised_mean_difference(a, b),
    }
