"""The library-wide random number generator (``minissl.manual_seed``), like ``torch.manual_seed``.

Everything random that is not given its own generator draws from one module-level
``numpy.random.Generator``: the initial weights of layers built without ``rng=``, and whatever
else asks ``default_generator()``. Seeding it once at the top of a script makes the whole run
reproducible:

>>> import minissl
>>> _ = minissl.random.manual_seed(0)
>>> a = minissl.nn.Linear(4, 3).weight.numpy()
>>> _ = minissl.random.manual_seed(0)
>>> b = minissl.nn.Linear(4, 3).weight.numpy()
>>> bool((a == b).all())
True

It starts from a fixed seed (0) so that two runs of the same program agree even without a
call to ``manual_seed`` (PyTorch's default generator is also deterministically seeded). The
generator is NumPy's PCG64: ``manual_seed`` does not reproduce PyTorch's Mersenne Twister
streams, so weights are equal in distribution to PyTorch's, not bit for bit; to get PyTorch's
exact weights, load its ``state_dict``.
"""
import numpy as np

DEFAULT_SEED = 0

_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed):
    """Reseed the default generator with ``seed`` (a non-negative int) and return it."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator():
    """The current default ``numpy.random.Generator`` (changes when ``manual_seed`` is called)."""
    return _generator


def get_generator(rng=None):
    """``rng`` itself if given (a ``numpy.random.Generator`` or an int seed), else the default.

    An int makes a fresh generator seeded with it, so ``Linear(4, 3, rng=0)`` is reproducible
    on its own.
    """
    if rng is None:
        return _generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, "
                    f"got {type(rng).__name__}")
