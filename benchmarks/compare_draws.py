"""Two libraries' random initial weights, compared parameter by parameter over many seeds:
the tool behind ``bench_mae.py --init-stats`` and ``bench_pixelcnn.py --init-stats``.

A benchmark that compares minissl with the same recipe in PyTorch, each from its own draw of
the initial weights, is only fair if the two draws come from one distribution. One seed
cannot show that; the pool of a parameter's values over many seeds can: its mean, standard
deviation and largest magnitude, and the two-sample Kolmogorov-Smirnov test of the two
pools (under one distribution its p-value is uniform on [0, 1]; a wrong bound or fan-in
drives it to 0 within a few seeds). Parameters set to a constant (zero biases, LayerNorm's
ones) are compared for equality instead.
"""
import numpy as np


def pool(pools, name, ours, theirs):
    """Adds one seed's values of the parameter ``name`` (minissl's ``ours``, PyTorch's
    ``theirs``, any array-likes) to ``pools`` {name: ([minissl arrays], [PyTorch arrays])}."""
    a, b = pools.setdefault(name, ([], []))
    a.append(np.asarray(ours, np.float64).ravel())
    b.append(np.asarray(theirs, np.float64).ravel())


def table(pools):
    """Prints the comparison of ``pool``'s pools, one line a parameter; returns {name:
    (minissl values, PyTorch values)}, each flat over all seeds."""
    from scipy.stats import ks_2samp
    pools = {k: (np.concatenate(a), np.concatenate(b)) for k, (a, b) in pools.items()}
    print(f"{'parameter':38s} {'minissl mean/std/max|w|':>26s} {'PyTorch mean/std/max|w|':>26s}"
          f"  KS p")
    for name, (a, b) in pools.items():
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            p = "equal" if np.array_equal(a, b) else "DIFFER"
        else:
            p = f"{ks_2samp(a, b).pvalue:.3f}"
        print(f"{name:38s} " + "  ".join(f"{v.mean():+.4f} {v.std():.4f} {np.abs(v).max():.4f}"
                                         for v in (a, b)) + f"  {p}")
    return pools


def differing(pools, alpha=1e-3):
    """The names of ``table``'s pools whose two draws differ: constants that are not equal,
    or drawn values whose Kolmogorov-Smirnov p-value is under ``alpha`` (empty: one
    distribution, as far as these seeds can tell)."""
    from scipy.stats import ks_2samp
    return [name for name, (a, b) in pools.items()
            if (not np.array_equal(a, b) if np.ptp(a) == 0 and np.ptp(b) == 0
                else ks_2samp(a, b).pvalue < alpha)]
