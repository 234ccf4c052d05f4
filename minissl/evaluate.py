"""Downstream evaluation: are the learned features worth something?

* ``linear_probe``: multinomial logistic regression, trained with minissl on frozen features
  standardised with the statistics of the labelled set (Kolesnikov et al. 2019's protocol).
* ``few_label_probe``: the linear probe fitted on K labelled images per class, averaged over
  several random draws of those images (the project's quality bar).
* ``knn_classify``: cosine k-nearest neighbours with a temperature-weighted vote,
  weight = exp(sim / T) (Wu et al. 2018, "Unsupervised feature learning via non-parametric
  instance discrimination").
* ``finetune``: encoder + linear head trained end to end on a fraction of the labels.
* Collapse diagnostics: ``embedding_std`` (per-dimension std of L2-normalised embeddings;
  about 1/sqrt(D) when healthy, 0 when collapsed, Chen & He 2021), ``alignment`` and
  ``uniformity`` (Wang & Isola 2020).
"""
import numpy as np

from . import functional as F
from . import nn, optim
from .autograd import no_grad, tensor
from .data import per_class_subset


def standardize(train, *others, eps=1e-6):
    """Standardise with the mean and std of ``train`` (per feature); returns all of them."""
    mu = train.mean(0, keepdims=True)
    sd = train.std(0, keepdims=True) + eps
    return tuple((a - mu) / sd for a in (train,) + others)


def logistic_regression(x, y, num_classes, C=1.0, steps=500, lr=0.05, seed=0):
    """Fit a softmax classifier ``W x + b`` by full-batch Adam on

        mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C n)

    which is scikit-learn's ``LogisticRegression(C)`` objective divided by C n (the bias is not
    penalised); returns the fitted ``nn.Linear``."""
    rng = np.random.default_rng(seed)
    head = nn.Linear(x.shape[1], num_classes, rng=rng)
    opt = optim.Adam(head.parameters(), lr=lr)
    xt, yt = tensor(x.astype(np.float32)), tensor(y.astype(np.int64))
    penalty = 1.0 / (2.0 * C * len(x))
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(head(xt), yt) + (head.weight * head.weight).sum() * penalty
        loss.backward()
        opt.step()
    return head


def predict(head, x):
    with no_grad():
        return head(tensor(x.astype(np.float32))).data.argmax(1)


def linear_probe(train_x, train_y, test_x, test_y, num_classes=None, standardize_with=None,
                 **kwargs):
    """Test accuracy of a logistic regression on standardised frozen features.

    Features are standardised with the mean and std of ``standardize_with`` (default: the
    training features themselves); ``kwargs`` go to ``logistic_regression``."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    ref = train_x if standardize_with is None else standardize_with
    _, tr, te = standardize(ref, train_x, test_x)
    head = logistic_regression(tr, train_y, num_classes, **kwargs)
    return float((predict(head, te) == test_y).mean())


def few_label_probe(train_x, train_y, test_x, test_y, labels_per_class, draws=5, seed=0,
                    **kwargs):
    """Mean (and std) test accuracy of the linear probe fitted on ``labels_per_class``
    random labelled training examples per class, over ``draws`` random draws.

    The standardisation statistics come from ALL training features (they need no labels, and
    the std of one example per class would be meaningless); only the classifier sees labels."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    accs = []
    for d in range(draws):
        idx = per_class_subset(train_y, labels_per_class, seed=seed + d)
        accs.append(linear_probe(train_x[idx], train_y[idx], test_x, test_y, num_classes,
                                 standardize_with=train_x, seed=seed + d, **kwargs))
    return float(np.mean(accs)), float(np.std(accs))


def knn_classify(train_x, train_y, test_x, test_y, k=20, temperature=0.1, batch_size=1024):
    """Accuracy of a cosine kNN: the k most similar training features vote for their label
    with weight exp(similarity / temperature)."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    tr = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    te = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(tr))
    correct = 0
    for i in range(0, len(te), batch_size):
        sim = te[i:i + batch_size] @ tr.T                                 # (b, N)
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]              # (b, k)
        w = np.exp(np.take_along_axis(sim, nn_idx, 1) / temperature)      # (b, k)
        votes = np.zeros((len(sim), num_classes))
        np.add.at(votes, (np.arange(len(sim))[:, None], train_y[nn_idx]), w)
        correct += int((votes.argmax(1) == test_y[i:i + batch_size]).sum())
    return correct / len(te)


def finetune(method, train_x, train_y, test_x, test_y, labels_per_class, epochs=30,
             lr=1e-3, batch_size=64, seed=0):
    """Fine-tune ``method.encoder`` with a new linear head on ``labels_per_class`` labelled
    examples per class (the encoder is updated too); returns the test accuracy."""
    rng = np.random.default_rng(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    idx = per_class_subset(train_y, labels_per_class, seed=seed)
    x, y = train_x[idx], train_y[idx]
    dim = method.features(x[:2]).shape[1]
    head = nn.Linear(dim, num_classes, rng=rng)
    params = [p for p in method.encoder.parameters()] + list(head.parameters())
    opt = optim.Adam(params, lr=lr)
    method.encoder.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch_size):
            b = order[s:s + batch_size]
            if len(b) < 2:   # BatchNorm needs two examples
                continue
            opt.zero_grad()
            loss = F.cross_entropy(head(method.encoder(method.as_input(x[b]))), tensor(y[b]))
            loss.backward()
            opt.step()
    method.encoder.eval()
    with no_grad():
        pred = head(method.encoder(method.as_input(test_x))).data.argmax(1)
    method.encoder.train()
    return float((np.asarray(pred) == test_y).mean())


def embedding_std(z):
    """Mean over dimensions of the std of the L2-normalised embeddings z (N, D)."""
    z = np.asarray(z, dtype=np.float64)
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return float(zn.std(0).mean())


def alignment(z1, z2, alpha=2):
    """E ||f(x) - f(x')||^alpha over positive pairs of L2-normalised embeddings (lower is
    better aligned)."""
    a = z1 / np.maximum(np.linalg.norm(z1, axis=1, keepdims=True), 1e-12)
    b = z2 / np.maximum(np.linalg.norm(z2, axis=1, keepdims=True), 1e-12)
    return float((np.linalg.norm(a - b, axis=1) ** alpha).mean())


def uniformity(z, t=2):
    """log E exp(-t ||f(x) - f(y)||^2) over distinct pairs of L2-normalised embeddings (lower
    is more uniform on the sphere)."""
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sq = np.maximum(2 - 2 * zn @ zn.T, 0)
    iu = np.triu_indices(len(zn), 1)
    v = -t * sq[iu]
    m = v.max()
    return float(m + np.log(np.exp(v - m).mean()))


def raw_pixel_features(x):
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)
