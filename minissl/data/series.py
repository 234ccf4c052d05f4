"""Synthetic autoregressive time series, whose true coefficients a model should recover.

An AR(p) process (Box & Jenkins, *Time Series Analysis*, ch. 3) is

    x_t = a_1 x_{t-1} + ... + a_p x_{t-p} + e_t,    e_t ~ N(0, noise_std^2) i.i.d.

It is stationary when every root z of its characteristic polynomial
``1 - a_1 z - ... - a_p z^p`` lies outside the unit circle, equivalently when every
eigenvalue of the companion matrix lies inside it. Next-step prediction of such a series is
the simplest self-supervised task there is: the best linear predictor *is* the process, so a
trained autoregressive model must find ``a``.
"""
from dataclasses import dataclass

import numpy as np

DEFAULT_COEFFICIENTS = (0.6, -0.3, 0.2)


def companion_matrix(coefficients):
    """The p x p companion matrix of AR coefficients ``(a_1, ..., a_p)``.

    The state ``s_t = (x_t, ..., x_{t-p+1})`` evolves as ``s_t = C s_{t-1} + e_t (1, 0, ...)``;
    the process is stationary iff the spectral radius of C is below one.
    """
    a = np.asarray(coefficients, dtype=np.float64)
    p = len(a)
    c = np.zeros((p, p))
    c[0] = a
    c[1:, :-1] = np.eye(p - 1)
    return c


def is_stationary(coefficients):
    """True when the AR process with these coefficients is (weakly) stationary."""
    a = np.asarray(coefficients, dtype=np.float64)
    return len(a) == 0 or bool(np.max(np.abs(np.linalg.eigvals(companion_matrix(a)))) < 1.0)


@dataclass(eq=False)
class ARSeries:
    """Samples of one AR(p) process."""

    series: np.ndarray        # (n_series, length) float32, independent realisations
    coefficients: np.ndarray  # (p,) float64, a_1 .. a_p (a_k multiplies x_{t-k})
    noise_std: float          # standard deviation of the innovations e_t

    @property
    def order(self):
        """p, the number of lags."""
        return len(self.coefficients)

    def lagged(self, p=None):
        """The regression problem of next-step prediction: ``(X, y)`` float64.

        ``X[:, k - 1] = x_{t-k}`` for k = 1..p and ``y = x_t``, over every series and every
        t >= p: ``X`` is ``(n_series * (length - p), p)``. Least squares on it estimates the
        coefficients (the conditional maximum-likelihood estimate of an AR model).
        """
        p = self.order if p is None else int(p)
        x = self.series.astype(np.float64)
        n, length = x.shape
        if not 0 < p < length:
            raise ValueError(f"ARSeries.lagged: p must be in [1, {length}), got {p}")
        lags = np.stack([x[:, p - k:length - k] for k in range(1, p + 1)], axis=-1)
        return lags.reshape(-1, p), x[:, p:].reshape(-1)


def ar(n_series=64, length=256, coefficients=None, noise_std=1.0, seed=0, burn_in=200):
    """Sample ``n_series`` independent series of an AR(p) process (see the module docstring).

    Each series starts at zero and runs ``burn_in`` steps before the ``length`` that are kept,
    so the kept part is (very nearly) a draw from the stationary distribution. The default
    coefficients ``(0.6, -0.3, 0.2)`` are stationary; non-stationary ones raise ValueError.
    """
    a = np.asarray(DEFAULT_COEFFICIENTS if coefficients is None else coefficients,
                   dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("ar: need at least one coefficient")
    if not is_stationary(a):
        radius = np.max(np.abs(np.linalg.eigvals(companion_matrix(a))))
        raise ValueError(f"ar: coefficients {tuple(a)} are not stationary (companion spectral "
                         f"radius {radius:.3f} >= 1: a root of 1 - sum a_k z^k lies on or "
                         f"inside the unit circle)")
    if n_series < 1 or length < 1 or burn_in < 0 or noise_std < 0:
        raise ValueError(f"ar: need n_series >= 1, length >= 1, burn_in >= 0, noise_std >= 0; "
                         f"got {n_series}, {length}, {burn_in}, {noise_std}")
    p = len(a)
    rng = np.random.default_rng(seed)
    total = burn_in + length
    e = rng.standard_normal((n_series, total)) * noise_std
    x = np.zeros((n_series, p + total))  # p leading zeros are the initial state
    reversed_a = a[::-1]  # so that x[:, t-p:t] @ reversed_a = sum_k a_k x_{t-k}
    for t in range(total):  # a recurrence: the steps must run in order, series in parallel
        x[:, p + t] = x[:, t:t + p] @ reversed_a + e[:, t]
    return ARSeries(x[:, p + burn_in:].astype(np.float32), a, float(noise_std))
