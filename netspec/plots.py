"""Pictures of a run, written when matplotlib (the optional ``plot`` extra) is installed:
curves.png (loss and accuracies: validation ones when the run holds out a validation
split), misclassified.png (first 20 misclassified test images, 4x5, label and
prediction; not for a run that never reads the test set), filters.png (the first
conv layer's filters)."""
import os

import numpy as np

from .numerics import class_labels


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def save_plots(trainer):
    plt = _pyplot()
    if plt is None:
        return []
    out = [plot_curves(plt, trainer.history, os.path.join(trainer.run_dir, "curves.png"))]
    m = trainer.model
    if m.loss_fn.classification and len(m.input_shape) == 3 and trainer.x_test is not None:
        out.append(plot_misclassified(plt, m, trainer.x_test, trainer.t_test,
                                      os.path.join(trainer.run_dir, "misclassified.png")))
    conv = next((l for l in m.layers if l.spec.type == "conv2d"), None)
    if conv is not None:
        out.append(plot_filters(plt, conv.params["W"], os.path.join(trainer.run_dir, "filters.png")))
    return [p for p in out if p]


def plot_curves(plt, history, path):
    if not history:
        return None
    epochs = [m["epoch"] for m in history]
    split = "val" if "val_loss" in history[0] else "test"  # per-epoch reports use the validation split
    name = {"val": "validation", "test": "test"}[split]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(epochs, [m["train_loss"] for m in history], label="train loss")
    axes[0].plot(epochs, [m[f"{split}_loss"] for m in history], label=f"{name} loss")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    if history[0].get("train_acc") is not None:
        axes[1].plot(epochs, [m["train_acc"] for m in history], marker="o", label="train")
        axes[1].plot(epochs, [m[f"{split}_acc"] for m in history], marker="s", label=name)
        axes[1].set_ylabel("accuracy")
        axes[1].legend()
    else:
        axes[1].axis("off")
    axes[1].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_misclassified(plt, model, x, t, path, count=20):
    y = model.predict(x, batch_size=1000).argmax(axis=1)
    labels = class_labels(t)
    wrong = np.flatnonzero(y != labels)[:count]
    fig, axes = plt.subplots(4, 5, figsize=(7, 6))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        img = x[i]
        ax.imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray")
        ax.set_title(f"{labels[i]} -> {y[i]}", fontsize=9)
    fig.suptitle(f"first {len(wrong)} misclassified test images (label -> prediction)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_filters(plt, W, path, limit=32):
    n = min(len(W), limit)
    cols = 8
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(W[k, 0], cmap="gray", interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
