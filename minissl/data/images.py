"""Image data sets that are always on the machine: scikit-learn's digits and procedural shapes.

``digits()`` is real data (1797 handwritten digits, 8x8 grey, shipped inside scikit-learn, no
download). ``shapes()`` needs nothing at all: ten classes of simple figures drawn with random
position, size, tilt and colours, so a small network has to learn shape, not colour.
"""
import numpy as np

from .dataset import Dataset, stratified_split

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

SHAPE_NAMES = ["circle", "square", "triangle", "cross", "horizontal bars", "vertical bars",
               "diagonal stripes", "ring", "checkerboard", "plus"]


def digits(test_fraction=0.3, seed=0):
    """scikit-learn's handwritten digits (UCI ML, Alpaydin & Kaynak 1998) as a :class:`Dataset`.

    1797 images ``(N, 1, 8, 8)`` float32 with values ``pixels / 16`` in [0, 1] (the raw
    pixels count 0..16 dark cells of a 4x4 block), labels 0..9, class names "zero".."nine".
    The split is stratified and seeded (:func:`stratified_split`): with the defaults it is the
    same 70/30 split on every machine and every call.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("minissl.data.digits() reads the handwritten digits bundled with "
                          "scikit-learn (no download); install it with: pip install "
                          "scikit-learn") from None
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y, test_fraction=test_fraction, seed=seed)
    return Dataset("digits", x[train], y[train], x[test], y[test], 10, list(DIGIT_NAMES))


# ---------------------------------------------------------------------------------------------
# Procedural shapes
#
# Every figure is defined in its own coordinates (u, v): the figure's centre is the origin, one
# unit is its radius, u points right and v points down (image rows grow downwards). The pixel
# grid is mapped into those coordinates per image (shift, tilt, scale), so drawing a whole batch
# is a few broadcast comparisons, with no Python loop over images.
# ---------------------------------------------------------------------------------------------

_STRIPE_PERIOD = 0.6   # in radii: about three stripes across a figure
_CHECKER_CELL = 0.5    # in radii: about a 4x4 board
_BOX = 0.85            # half-width of the square frame that holds the patterned figures


def _figure_masks(label, u, v, phase):
    """Boolean foreground ``(n, H, W)`` of class ``label`` at shape coordinates ``u, v``.

    ``phase`` (n, 1, 1) in [0, 1) shifts the stripes and the checkerboard, so that these
    classes are not recognisable from a single pixel.
    """
    au, av = np.abs(u), np.abs(v)
    box = np.maximum(au, av) <= _BOX
    r2 = u * u + v * v
    name = SHAPE_NAMES[label]
    if name == "circle":
        return r2 <= 1.0
    if name == "square":
        return np.maximum(au, av) <= 0.8
    if name == "triangle":  # apex up at v = -0.95, flat base at v = 0.75
        return (v <= 0.75) & (au <= 0.55 * (v + 0.95))
    if name == "cross":  # an X: two diagonal arms; |u -+ v| / sqrt 2 is the distance to an arm
        return box & ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4))
    if name == "horizontal bars":
        return box & (np.mod(v / _STRIPE_PERIOD + phase, 1.0) < 0.5)
    if name == "vertical bars":
        return box & (np.mod(u / _STRIPE_PERIOD + phase, 1.0) < 0.5)
    if name == "diagonal stripes":  # (u + v) / sqrt 2 is the coordinate across the stripes
        return box & (np.mod((u + v) / (_STRIPE_PERIOD * np.sqrt(2.0)) + phase, 1.0) < 0.5)
    if name == "ring":
        return (r2 >= 0.55 ** 2) & (r2 <= 1.0)
    if name == "checkerboard":
        cells = np.floor(u / _CHECKER_CELL + phase) + np.floor(v / _CHECKER_CELL + phase)
        return box & (np.mod(cells, 2.0) == 0)
    if name == "plus":
        return box & ((au <= 0.25) | (av <= 0.25))
    raise AssertionError(name)


def render_shapes(labels, size, center, radius, angle, foreground, background, phase=None):
    """Draw figures without noise: float32 ``(n, 3, size, size)`` in [0, 1].

    labels (n,) class indices into ``SHAPE_NAMES``; center (n, 2) as (row, column) in pixels
    (the top-left pixel's centre is (0.5, 0.5)); radius (n,) in pixels; angle (n,) tilt in
    radians (counter-clockwise on screen); foreground and background (n, 3) RGB colours in
    [0, 1]; phase (n,) in [0, 1) offsets the patterned classes (default 0).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if phase is None:
        phase = np.zeros(n)
    f32 = np.float32
    grid = np.arange(size, dtype=f32) + f32(0.5)  # pixel centres
    dy = grid[None, :, None] - np.asarray(center, f32)[:, 0, None, None]  # (n, H, 1)
    dx = grid[None, None, :] - np.asarray(center, f32)[:, 1, None, None]  # (n, 1, W)
    cos = np.cos(angle).astype(f32)[:, None, None]
    sin = np.sin(angle).astype(f32)[:, None, None]
    inv_r = (1.0 / np.asarray(radius, f32))[:, None, None]
    # Rotate the grid by -angle so that the figure appears turned by +angle (rows point down,
    # hence the signs).
    u = (cos * dx - sin * dy) * inv_r  # (n, H, W)
    v = (sin * dx + cos * dy) * inv_r
    mask = np.zeros((n, size, size), dtype=bool)
    phase = np.asarray(phase, f32)[:, None, None]
    for k in range(len(SHAPE_NAMES)):
        rows = np.flatnonzero(labels == k)
        if rows.size:
            mask[rows] = _figure_masks(k, u[rows], v[rows], phase[rows])
    fg = np.asarray(foreground, f32)[:, :, None, None]
    bg = np.asarray(background, f32)[:, :, None, None]
    return bg + (fg - bg) * mask[:, None]


def _shapes_split(n, size, noise, rng):
    labels = rng.permutation(np.arange(n) % len(SHAPE_NAMES))  # balanced classes
    radius = rng.uniform(0.22, 0.42, n) * size
    center = rng.uniform(radius[:, None], size - radius[:, None], (n, 2))
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    phase = rng.uniform(0.0, 1.0, n)
    background = rng.uniform(0.0, 1.0, (n, 3))
    foreground = rng.uniform(0.0, 1.0, (n, 3))
    # Redraw foregrounds too close to their background (some channel must differ by 0.4): a
    # figure must be visible, but its colour must carry no information about its class.
    while True:
        bad = np.flatnonzero(np.abs(foreground - background).max(axis=1) < 0.4)
        if bad.size == 0:
            break
        foreground[bad] = rng.uniform(0.0, 1.0, (bad.size, 3))
    x = render_shapes(labels, size, center, radius, angle, foreground, background, phase)
    if noise > 0:
        x += np.float32(noise) * rng.standard_normal(x.shape, dtype=np.float32)
        np.clip(x, 0.0, 1.0, out=x)
    return x, labels.astype(np.int64)


def shapes(n_train=2000, n_test=500, size=32, seed=0, noise=0.05):
    """A procedural 10-class RGB image set that needs no file and no dependency.

    Classes (``SHAPE_NAMES``): circle, square, triangle, cross (an X), horizontal bars,
    vertical bars, diagonal stripes, ring, checkerboard, plus. Each image draws one figure with
    a random centre, radius (22-42 % of the image), tilt (within +-15 degrees, so bars keep
    their orientation), pattern phase, foreground and background colour (differing by at least
    0.4 in some channel), then adds Gaussian pixel noise of std ``noise`` and clips to [0, 1].
    Both splits are class-balanced. Train and test come from independent child seeds of
    ``seed``, so the training images do not change with ``n_test``.

    Returns a :class:`Dataset` with float32 images ``(N, 3, size, size)``; ``size >= 8``.
    """
    if int(size) != size or size < 8:
        raise ValueError(f"shapes: size must be an integer >= 8, got {size}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"shapes: n_train and n_test must be >= 0, got {n_train}, {n_test}")
    train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    train_x, train_y = _shapes_split(int(n_train), int(size), noise,
                                     np.random.default_rng(train_seed))
    test_x, test_y = _shapes_split(int(n_test), int(size), noise,
                                   np.random.default_rng(test_seed))
    return Dataset("shapes", train_x, train_y, test_x, test_y, len(SHAPE_NAMES),
                   list(SHAPE_NAMES))
