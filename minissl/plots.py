"""Pictures of a pretraining run, saved as PNG with matplotlib (an optional extra).

``save_all(out, method, data, history)`` writes what fits the method: the loss curve, the
online evaluations (``monitor.png``, when ``--knn-every``/``--probe-every`` logged any), a 2-D
PCA of the test embeddings coloured by label, reconstructions (autoencoders, VAE, MAE),
samples (VAE), generated text (language models), and for the audio methods whatever their
``save_examples(out, data)`` writes (waveforms, WAV files). Returns the paths written.
"""
import os

import numpy as np

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as e:  # the caller skips plotting
    raise ImportError(f"plots need matplotlib (pip install matplotlib): {e}") from None


def _save(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def loss_curve(history, path, title):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


MONITORS = {"knn_acc": "kNN accuracy (k=20)", "probe_acc_10": "linear probe, 10 labels/class"}


def monitor_curve(history, path, title):
    """The online evaluations of ``--knn-every`` / ``--probe-every`` against the epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in MONITORS.items():
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pca_2d(features):
    """Project (N, D) features on their two leading principal components."""
    x = features - features.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def embedding_pca(features, labels, path, title):
    p = pca_2d(np.asarray(features, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sc = ax.scatter(p[:, 0], p[:, 1], c=labels, cmap="tab10", s=6)
    ax.legend(*sc.legend_elements(), fontsize=6, loc="best", title="label")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def image_grid(rows, path, title, row_names=None):
    """Rows of images (each (n, C, H, W) in [0, 1]) as one grid."""
    n = min(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(n):
            img = np.clip(np.asarray(r[j]), 0, 1)
            ax = axes[i][j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
        if row_names:
            axes[i][0].set_ylabel(row_names[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def waveforms(rows, path, title, row_names=None, sample_rate=8000, n=4):
    """Rows of clips (each (N, L) samples in [-1, 1]): the first ``n`` of each row side by
    side, one small plot per clip, time in seconds."""
    n = min(n, *(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 2.2, len(rows) * 1.1), squeeze=False,
                             sharey=True)
    for i, r in enumerate(rows):
        for j in range(n):
            clip = np.asarray(r[j])
            axes[i][j].plot(np.arange(len(clip)) / sample_rate, clip, lw=0.4)
            axes[i][j].set_ylim(-1, 1)
            axes[i][j].tick_params(labelsize=5)
        if row_names:
            axes[i][0].set_ylabel(row_names[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_all(out, method, data, history):
    written = []
    if history:
        written.append(loss_curve(history, os.path.join(out, "loss.png"),
                                  f"{method.name}: training loss"))
    if any(k in r for r in history for k in MONITORS):
        written.append(monitor_curve(history, os.path.join(out, "monitor.png"),
                                     f"{method.name}: online evaluation (held-out split)"))
    if method.data_kind in ("images", "video"):
        n = min(len(data.test_x), 1000)
        feats = method.features(data.test_x[:n])
        written.append(embedding_pca(feats, data.test_y[:n], os.path.join(out, "pca.png"),
                                     f"{method.name}: PCA of test features"))
        rng = np.random.default_rng(0)
        if hasattr(method, "picture_rows"):   # inpainting, colourisation: input, output, target
            rows, names = method.picture_rows(data.test_x[:10])
            written.append(image_grid(rows, os.path.join(out, "reconstructions.png"),
                                      f"{method.name}: test images", names))
        elif hasattr(method, "reconstruct"):
            x = data.test_x[:10]
            try:
                rec = method.reconstruct(x, rng)
            except TypeError:
                rec = method.reconstruct(x)
            rec = rec[0] if isinstance(rec, tuple) else rec
            rec = rec.numpy() if hasattr(rec, "numpy") else np.asarray(rec)
            written.append(image_grid([x, rec.reshape(x.shape)],
                                      os.path.join(out, "reconstructions.png"),
                                      f"{method.name}: test images and reconstructions",
                                      ["input", "output"]))
        if hasattr(method, "sample"):
            s = method.sample(10, rng)
            s = s.numpy() if hasattr(s, "numpy") else np.asarray(s)
            written.append(image_grid([s.reshape((10,) + data.image_shape)],
                                      os.path.join(out, "samples.png"),
                                      f"{method.name}: samples from the prior"))
    if method.data_kind == "audio":
        n = min(len(data.test_x), 1000)
        if getattr(data, "labelled", True):
            written.append(embedding_pca(method.features(data.test_x[:n]), data.test_y[:n],
                                         os.path.join(out, "pca.png"),
                                         f"{method.name}: PCA of test features"))
        if hasattr(method, "save_examples"):   # its own pictures and WAV files
            written += method.save_examples(out, data)
    if method.data_kind == "text" and hasattr(method, "generate_text"):
        path = os.path.join(out, "generated.txt")
        with open(path, "w") as f:
            f.write(method.generate_text(data, 400, np.random.default_rng(0)))
        written.append(path)
    return written
