"""What every self-supervised method shares: the ``SSLMethod`` interface and default encoders.

A method is an ``nn.Module`` that owns its networks (an encoder whose output are the features
we evaluate, plus the heads the pretext task needs), makes its own pseudo-labels from unlabeled
data, and exposes one training step:

    loss, metrics = method.training_step(batch, rng)   # batch: (B, C, H, W) images,
                                                        # (B, T) token ids, (B, L) series
                                                        # or (B, L) audio clips
    loss.backward(); optimizer.step()
    method.on_step_end(step, total_steps)               # e.g. the EMA of BYOL / MoCo targets

``features(x)`` returns the frozen encoder's features for the downstream evaluations.
"""
import copy
import math

import numpy as np

from .. import augment, distributed as dist, nn
from ..autograd import Tensor, no_grad, tensor
from ..backend import get_array_module


class SSLMethod(nn.Module):
    """Base class of the methods in this package (see the module docstring)."""

    name = "method"
    data_kind = "images"  # "images", "audio", "video", "text" or "series": fed to training_step
    uses_total_steps = False  # on_step_end schedules over total_steps: fixed for a resume

    def training_data(self, data):
        """What pretraining iterates over: an array (or a tuple of equally long arrays) whose
        mini-batches ``training_step`` receives. Image methods use the unlabeled training
        images; text and series methods cut their data into windows; CLIP pairs images with
        captions."""
        return data.train_x

    def training_step(self, batch, rng):
        """One step's loss (a scalar Tensor with a graph) and a dict of float metrics."""
        raise NotImplementedError

    def on_step_end(self, step, total_steps):
        """Called after each optimiser step (step counts from 0)."""

    def trainable_parameters(self):
        """The parameters the optimiser updates (EMA targets and frozen parts excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def features(self, x, batch_size=1024):
        """Frozen encoder features of ``x`` as a float32 host array (N, D), in eval mode."""
        return self.map_batches(self.feature_batch, x, batch_size)

    def map_batches(self, fn, x, batch_size):
        """``fn`` (a batch -> a Tensor (b, D)) over ``x`` in slices of ``batch_size``, in eval
        mode without a graph; the rows as one float32 host array (N, D)."""
        was_training = self.training
        self.eval()
        out = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                out.append(fn(x[i:i + batch_size]).numpy())
        self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def feature_batch(self, x):
        """The features (B, D) Tensor of one batch of inputs: the encoder's output. Methods
        whose features come from inside a larger network override this."""
        return self.encoder(self.as_input(x))

    def as_input(self, x):
        """An input array as a Tensor on this method's device, in the parameters' dtype."""
        if isinstance(x, Tensor):
            return x
        p = next(iter(self.parameters()))
        return tensor(x, dtype=p.dtype, device=p.device)


class AudioMethod(SSLMethod):
    """Base of the methods that train on raw waveforms (an ``AudioDataset``'s clips).

    Batches are clips (B, L) in [-1, 1]; ``encode`` maps them to frames (B, C, T) (T = L or a
    strided fraction of it) and the features of a clip are its frames averaged over time
    (B, C), the usual pooling for a clip-level probe of a frame-level model (wav2vec's
    downstream tasks, CPC's speaker classification: a linear classifier on pooled frames)."""

    data_kind = "audio"

    def training_data(self, data):
        return data.train_x

    def encode(self, x):
        """Frames (B, C, T) of a batch of clips: the network whose output we evaluate."""
        raise NotImplementedError

    def test_metrics(self, data):
        """The method's own figures on the test split of ``data`` (``minissl eval`` prints
        them beside the probe): a dict of floats, none by default."""
        return {}

    def as_clips(self, x, min_batch=1, min_length=1):
        """A batch of clips (B, L) as a (B, 1, L) Tensor in the parameters' dtype, checked."""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 2 or shape[0] < min_batch or shape[1] < min_length:
            raise ValueError(f"{type(self).__name__}: expected clips (B, L) with B >= "
                             f"{min_batch} and L >= {min_length}, got "
                             f"{'shape ' + str(shape) if shape else type(x).__name__}")
        x = self.as_input(x)
        return x.reshape(shape[0], 1, shape[1])

    def features(self, x, batch_size=256):
        """Time-averaged frames (N, C) of clips x (N, L), float32 host array, eval mode."""
        return self.map_batches(lambda b: self.encode(b).mean(dim=2), x, batch_size)


class TwoViewMethod(SSLMethod):
    """Base of the methods that pass two augmented views of each image through one network,
    encoder f then projector g (SimCLR, SimSiam, Barlow Twins, VICReg). Subclasses set
    ``self.projector`` and compare the two embeddings in ``training_step``."""

    def __init__(self, image_shape, encoder=None, feature_dim=None, transform=None):
        super().__init__()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                   # f: x -> h (B, D)
        self.feature_dim = feature_dim
        self.transform = transform or default_augmentation(image_shape)

    def embed_views(self, x, rng, joint=False):
        """g(f(.)) of two random views of the batch x: (z1, z2), each (B, projection width).

        ``joint=False``: each view is its own batch (its own batch-norm statistics), as the
        official SimSiam, Barlow Twins, VICReg and BYOL codes call their networks.
        ``joint=True``: the 2B views go through f and g as ONE batch, statistics over both
        views, as the official SimCLR does (``tf.concat`` of the views along the batch).

        Data-parallel (N ranks): the views are drawn for the global batch and each rank keeps
        its B/N rows of each (jointly: a batch of 2B/N); SyncBatchNorm makes the statistics
        those of the global batch (of 2B views: TF's cross-replica BN), so the callers gather
        z1 and z2 where their loss needs the global batch."""
        v1, v2 = augment.two_views(x, self.transform, rng)     # (B, C, H, W) each
        v1, v2 = dist.shard(v1, v2)              # data-parallel: this rank's B/N rows
        if joint:
            b = len(v1)
            xp = get_array_module(v1)
            z = self.projector(self.encoder(self.as_input(xp.concatenate([v1, v2]))))
            return z[:b], z[b:]                                 # (B, D) each
        z1 = self.projector(self.encoder(self.as_input(v1)))
        z2 = self.projector(self.encoder(self.as_input(v2)))
        return z1, z2


def check_batch(who, x, item_shape, what="images", min_batch=1):
    """x must be an array of at least ``min_batch`` items of ``item_shape`` ((B, *item_shape));
    else a ValueError naming ``who``, what it expected and what it got."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != len(item_shape) + 1 or shape[1:] != tuple(item_shape) \
            or shape[0] < min_batch:
        raise ValueError(f"{who}: expected at least {min_batch} {what} (B, "
                         f"{', '.join(map(str, item_shape))}), got "
                         f"{'shape ' + str(shape) if shape else type(x).__name__}")


def projection_head(dims, hidden_bias=True, out_bias=True, out_bn=None):
    """An MLP head as the official codes write theirs: [Linear - BN - ReLU] per hidden width,
    then Linear and optionally a BatchNorm1d; children numbered like ``nn.Sequential`` (Linear
    "0", BN "1", ReLU "2", ...), so the state_dict keys are those of the PyTorch original.

    ``dims`` = (in, hidden..., out). ``hidden_bias=False`` drops the hidden Linears' biases
    (redundant before a BN; SimSiam, SimCLR). ``out_bias``: True, False, or "frozen" (present,
    left at its initial value, never trained: SimSiam's ``fc[6].bias.requires_grad = False``).
    ``out_bn``: None; "affine" (weight and bias); "scale" (weight trained, bias frozen at 0:
    TensorFlow's ``center=False``, SimCLR's output layer); or "plain" (``affine=False``:
    SimSiam's output).
    """
    if out_bias not in (True, False, "frozen") or out_bn not in (None, "affine", "scale",
                                                                  "plain"):
        raise ValueError(f"projection_head: out_bias must be True, False or 'frozen' and "
                         f"out_bn None, 'affine', 'scale' or 'plain'; got {out_bias!r}, "
                         f"{out_bn!r}")
    dims = tuple(int(d) for d in dims)
    layers = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=hidden_bias), nn.BatchNorm1d(d_out), nn.ReLU()]
    last = nn.Linear(dims[-2], dims[-1], bias=out_bias is not False)
    if out_bias == "frozen":
        last.bias.requires_grad = False
    layers.append(last)
    if out_bn is not None:
        bn = nn.BatchNorm1d(dims[-1], affine=out_bn != "plain")
        if out_bn == "scale":
            bn.bias.requires_grad = False
        layers.append(bn)
    head = nn.Sequential(*layers)
    head.out_dim = dims[-1]
    return head


def default_encoder(image_shape, hidden=(256, 256), widths=(32, 64, 128)):
    """The encoder used for a data set of ``image_shape`` (C, H, W), and its feature width.

    Small grayscale images (the 8x8 digits) get the quality-bar encoder, an MLP
    in-256-256 with BatchNorm and ReLU (Linear-BN-ReLU twice; features = its output); larger
    images get a small ResNet-style ``ConvEncoder``.
    """
    C, H, W = image_shape
    if H * W <= 256 and C == 1:
        return nn.MLPEncoder(C * H * W, hidden), hidden[-1]
    enc = nn.ConvEncoder(in_channels=C, widths=widths)
    return enc, widths[-1]


ENCODERS = ("mlp", "resnet")   # the built-in backbones ``build_encoder`` makes by name


def build_encoder(kind, image_shape, widths=None):
    """A built-in backbone by name for images of ``image_shape`` (C, H, W), and its feature
    width: ``"mlp"``, an ``nn.MLPEncoder`` over the flattened image (``widths``: its hidden
    sizes, default 256,256, the digits' quality-bar encoder); ``"resnet"``, an
    ``nn.ConvEncoder`` (a conv stem, one ``BasicBlock`` per width, the first at stride 1 and
    the others at stride 2, global average pool; default 32,64,128)."""
    C, H, W = image_shape
    if kind == "mlp":
        widths = tuple(widths or (256, 256))
        return nn.MLPEncoder(C * H * W, widths), widths[-1]
    if kind == "resnet":
        widths = tuple(widths or (32, 64, 128))
        strides = (1,) + (2,) * (len(widths) - 1)
        return nn.ConvEncoder(in_channels=C, widths=widths, strides=strides), widths[-1]
    raise ValueError(f"build_encoder: unknown encoder {kind!r}; built in: {', '.join(ENCODERS)}")


def encoder_args(encoder, feature_dim):
    """The ``encoder=``/``feature_dim=`` arguments of a method's constructor for a builder's
    ``encoder`` (any ``nn.Module`` mapping (B, C, H, W) images to (B, feature_dim) features;
    None: the method's default). ``feature_dim`` defaults to the encoder's ``out_dim``."""
    if encoder is None:
        return {}
    if feature_dim is None:
        feature_dim = getattr(encoder, "out_dim", None)
    if feature_dim is None:
        raise ValueError(f"a custom encoder ({type(encoder).__name__}) needs feature_dim=, the "
                         f"width of its output, or an out_dim attribute")
    return {"encoder": encoder, "feature_dim": int(feature_dim)}


def default_augmentation(image_shape):
    """The SimCLR-style augmentation for a data set: the digits recipe for 8x8 digits (shift
    of up to 1 pixel, 10 % pixel dropout, Gaussian noise 0.1), crop/flip/colour otherwise."""
    C, H, W = image_shape
    if H * W <= 256 and C == 1:
        return augment.digits_simclr()
    return augment.image_simclr(H)


def frozen_copy(module):
    """A deep copy of ``module`` whose parameters get no gradient: the start of an EMA target
    network (BYOL, MoCo), updated only by ``ema_update``."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
        p.grad = None
    return target


def ema_update(target, online, tau):
    """target <- tau * target + (1 - tau) * online, for every parameter, in place; buffers
    (BatchNorm running statistics) are copied from the online network."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.data *= tau
        pt.data += (1.0 - tau) * po.data
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.data[...] = bo.data


def cosine_tau(base_tau, step, total_steps):
    """BYOL's schedule of the EMA rate: tau = 1 - (1 - base_tau) (cos(pi k / K) + 1) / 2,
    rising from base_tau at step 0 to 1 at the last step (Grill et al. 2020, section 3.2)."""
    return 1.0 - (1.0 - base_tau) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


def enqueue(queue, queue_ptr, rows):
    """Overwrite the oldest rows of the ring buffer ``queue`` (K, D) with ``rows`` (B, D) (an
    array), wrapping around, and advance ``queue_ptr`` (a (1,) int64 buffer) by B mod K: the
    key queue of MoCo and the support set of NNCLR (``_dequeue_and_enqueue`` of the official
    codes, which assert K % B == 0 instead of wrapping)."""
    xp = get_array_module(queue.data)
    K = queue.shape[0]
    ptr = int(queue_ptr.data[0])
    b = min(len(rows), K)
    idx = (ptr + xp.arange(b)) % K
    queue.data[idx] = rows[:b].astype(queue.dtype, copy=False)
    queue_ptr.data[0] = (ptr + b) % K


def unit_rows(rng, n, d):
    """(n, d) float32 standard-normal rows scaled to unit length: the random initial content of
    a queue of normalised embeddings (MoCo's ``queue``, NNCLR's support set)."""
    q = rng.standard_normal((n, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)

