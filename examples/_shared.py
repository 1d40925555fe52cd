"""What every example script shares: its command line, where specs and pictures live, matplotlib or a note.

Each example is run as a script (``python examples/NAME.py``), so this module is
importable as ``_shared`` from the examples folder without any path setup.
"""
import argparse
from pathlib import Path

import numpy as np
import yaml

from netspec.threads import limit_blas_threads

# The compiled kernels run their own OpenMP threads; a second thread pool in OpenBLAS on
# the same two cores made a DeepConvNet step ~15x slower on a busy machine.
limit_blas_threads(1)

EXAMPLES = Path(__file__).resolve().parent
SPECS = EXAMPLES.parent / "specs"


def parse_args(doc, extra=None):
    """--quick and --out DIR, plus whatever ``extra(parser)`` adds."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a shortened run: few steps, small data")
    p.add_argument("--out", type=Path, default=EXAMPLES / "out",
                   help="folder for pictures (default: examples/out/)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def spec_path(name):
    return SPECS / f"{name}.yaml"


def spec_dict(name):
    """The spec file as a plain dict, for examples that shorten or vary it before training."""
    with open(spec_path(name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def pyplot(picture):
    """matplotlib.pyplot with a file backend, or None after printing that ``picture`` is skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping {picture} (pip install matplotlib)")
        return None
    return plt


def saved(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"saved {path}")


def gradient_scatter(plt, pairs, path, title):
    """Back-propagated vs numerical gradient elements, one colour per parameter array."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lo, hi = 0.0, 0.0
    for name, (backprop, numeric) in pairs.items():
        ax.scatter(numeric.ravel(), backprop.ravel(), s=8, label=name)
        lo, hi = min(lo, numeric.min(), backprop.min()), max(hi, numeric.max(), backprop.max())
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, zorder=0)
    ax.set_xlabel("numerical (central difference)")
    ax.set_ylabel("back-propagation")
    ax.set_title(title)
    ax.legend(fontsize=8)
    saved(plt, fig, path)


def curves(plt, history, path, title):
    """Training loss and train/test accuracy per epoch, side by side."""
    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [m["train_loss"] for m in history], label="train loss")
    left.plot(epochs, [m["test_loss"] for m in history], label="test loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [m["train_acc"] for m in history], marker="o", label="train")
    right.plot(epochs, [m["test_acc"] for m in history], marker="s", linestyle="--", label="test")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend(loc="lower right")
    fig.suptitle(title)
    saved(plt, fig, path)


def misclassified(model, x, t, count=20, batch_size=500):
    """Indices, labels and predictions of the first ``count`` misclassified samples; and all predictions."""
    pred = model.predict(x, batch_size=batch_size).argmax(axis=1)
    wrong = np.flatnonzero(pred != t)
    return wrong[:count], pred


def misclassified_grid(plt, x, t, pred, wrong, path, title, names=None):
    """The seed's 4x5 grid of misclassified images, each titled label -> prediction."""
    label = (lambda k: names[k]) if names else str
    fig, axes = plt.subplots(4, 5, figsize=(8, 7.5))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(x[i, 0], cmap="gray")
        ax.set_title(f"{label(t[i])} -> {label(pred[i])}", fontsize=8)
    fig.suptitle(title)
    saved(plt, fig, path)
