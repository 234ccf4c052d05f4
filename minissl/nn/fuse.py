"""``nn.fuse(model)``: run each BatchNorm + ReLU pair of a model as one op, when asked.

A BatchNorm followed by a ReLU costs two passes over the activations and two arrays each way;
fused (``ops/norm.py`` ``BatchNormTrain`` with ``relu=True``) the kernel applies the ReLU in
its output pass and masks the gradient in its backward passes: the same values, gradients and
running statistics with one pass and one array fewer each way (on conv_simclr's BatchNorm2d
layers, docs/performance.md). Nothing is fused behind the user's back: a model runs its
modules exactly as written until ``fuse`` is called on it.

Which pairs: a BatchNorm1d/2d with the stock forward followed by a ``ReLU`` inside a
``Sequential``, and the first BatchNorm + ReLU of a ``BasicBlock``. The model keeps its
modules, its parameters and its ``state_dict`` names; the fused ReLU modules pass their input
through (their repr says so). Fusing is in place and is not saved in checkpoints.
"""


def fuse(model):
    """Fuse the BatchNorm + ReLU pairs of ``model`` (in place); returns ``model``."""
    for m in model.modules():
        hook = getattr(type(m), "_fuse", None)
        if hook is not None:
            hook(m)
    return model
