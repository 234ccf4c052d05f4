"""The arguments of the command line (``minissl.cli``): the parser, and the checks of numbers
that argparse applies while parsing (a bad one is a one-line error, exit status 2)."""
import argparse
import math


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{self.prog}: {message}")


def _positive(kind, most=None):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {text}")
        return v
    return parse


MAX_DRAWS = 100   # each draw fits a probe; past ~100 the mean's error is far below the spread


def _nonnegative_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if not all(0 < w <= 65536 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be in 1..65536, got {text}")
    return widths


def _nonnegative_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


_DATA_ROOT_HELP = ("folder holding the MNIST / Fashion-MNIST / CIFAR-10 files (default: "
                   "$MINISSL_DATA, else ~/.minissl/data)")


def build_parser(commands):
    """The parser of ``minissl``; ``commands`` maps each subcommand to its function."""
    p = _Parser(prog="minissl", description="Self-supervised learning from first principles.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    pre = sub.add_parser("pretrain", help="pretrain a method on a data set",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pre.add_argument("method", help="a method of `minissl list`")
    pre.add_argument("--data", default="digits",
                     help="a data set of `minissl list`, or a path: a folder of PNG/JPEG "
                          "images (class subfolders = labels), a .npy/.npz file, a .txt file "
                          "or folder, a folder of .wav files")
    pre.add_argument("--data-root", metavar="DIR", help=_DATA_ROOT_HELP)
    pre.add_argument("--image-size", type=_positive(int, 1024), default=32,
                     help="images of a --data folder are resized and centre-cropped to this")
    pre.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="a setting of the method (repeatable; `minissl list METHOD` lists "
                          "them)")
    pre.add_argument("--config", metavar="FILE",
                     help="the method's settings as one JSON or TOML table (--set wins)")
    pre.add_argument("--epochs", type=_positive(int), default=100, help="total epochs")
    pre.add_argument("--batch-size", type=_positive(int), default=256)
    pre.add_argument("--lr", type=_positive(float), default=1e-3, help="learning rate")
    pre.add_argument("--encoder", choices=["mlp", "resnet"],
                     help="the backbone of an image method (default: an MLP for 8x8 grey "
                          "images, else the resnet): mlp (Linear-BN-ReLU per width) or resnet "
                          "(a conv stem, a BasicBlock per width, average pool)")
    pre.add_argument("--widths", type=_widths, metavar="W1,W2,...",
                     help="the encoder's widths (mlp default 256,256; resnet 32,64,128); "
                          "the last is the feature width")
    pre.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "lars"], default="adam")
    pre.add_argument("--weight-decay", type=_nonnegative_float, default=None,
                     help="weight decay (default: the optimiser's, 1e-2 for adamw, 1e-6 for "
                          "lars, else 0)")
    pre.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                     help="learning rate: constant, or linear warm-up then cosine decay to 0")
    pre.add_argument("--warmup-epochs", type=_nonnegative_int, default=0,
                     help="epochs of linear warm-up (--schedule cosine)")
    pre.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    pre.add_argument("--seed", type=_nonnegative_int, default=0,
                     help="seeds the weights, the batches and the augmentations")
    pre.add_argument("--out", default="runs/latest",
                     help="folder for checkpoint.npz, metrics.jsonl and the plots")
    pre.add_argument("--resume", action="store_true",
                     help="continue the run in OUT/checkpoint.npz up to --epochs (with the "
                          "same options; the result equals an uninterrupted run of --epochs; "
                          "a method whose schedule spans the run, BYOL, keeps its --epochs)")
    pre.add_argument("--probe-every", type=_nonnegative_int, default=0,
                     help="log a 10-labels-per-class probe accuracy every N epochs")
    pre.add_argument("--knn-every", type=_nonnegative_int, default=0, metavar="N",
                     help="log the kNN accuracy (k=20, cosine) of the held-out test split "
                          "against the training split's features every N epochs")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    pre.add_argument("--limit", type=_nonnegative_int, default=0, metavar="N",
                     help="train on the first N training examples only (0: all; for quick "
                          "runs and tests)")
    pre.set_defaults(fn=commands["pretrain"])

    ev = sub.add_parser("eval", help="evaluate a checkpoint's features; prints one JSON line",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("--checkpoint", required=True, help="a checkpoint.npz of pretrain")
    ev.add_argument("--protocol", choices=["linear", "knn", "finetune"], default="linear",
                    help="linear probe or cosine kNN on frozen features, or fine-tuning")
    ev.add_argument("--labels-per-class", type=_positive(int), default=10,
                    help="labelled training images per class the protocol may use")
    ev.add_argument("--draws", type=_positive(int, MAX_DRAWS), default=5,
                    help="random draws of the labelled images averaged (linear)")
    ev.add_argument("--data", help="evaluate on this data set instead of the checkpoint's")
    ev.add_argument("--data-root", metavar="DIR", help=_DATA_ROOT_HELP)
    ev.add_argument("--seed", type=_nonnegative_int, default=0)
    ev.set_defaults(fn=commands["eval"])

    em = sub.add_parser("embed", help="write the frozen features of both splits to .npz")
    em.add_argument("--checkpoint", required=True, help="a checkpoint.npz of pretrain")
    em.add_argument("--data", help="embed this data set or path instead of the checkpoint's")
    em.add_argument("--data-root", metavar="DIR", help=_DATA_ROOT_HELP)
    em.add_argument("--out", required=True, help="the .npz file to write")
    em.set_defaults(fn=commands["embed"])

    ls = sub.add_parser("list", help="the methods and data sets, or one method's settings")
    ls.add_argument("method", nargs="?", help="print this method's settings and defaults")
    ls.set_defaults(fn=commands["list"])

    de = sub.add_parser("demo", help="SimCLR on digits vs raw pixels vs a random encoder")
    de.add_argument("--epochs", type=_positive(int), default=100)
    de.add_argument("--seed", type=_nonnegative_int, default=0)
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--no-progress", action="store_true")
    de.set_defaults(fn=commands["demo"])

    co = sub.add_parser("conformance", help="write conformance vectors for ports")
    co.add_argument("--out", required=True)
    co.set_defaults(fn=commands["conformance"])
    return p
