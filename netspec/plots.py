"""Pictures of a run, written when matplotlib (the optional ``plot`` extra) is installed:
curves.png (loss and accuracies: validation ones when the run holds out a validation
split), misclassified.png (first 20 misclassified test images, 4x5, label and
prediction; not for a run that never reads the test set), filters.png (the first
conv layer's filters)."""
import os

import numpy as np

from .atomic import atomic_write
from .numerics import class_labels


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _save(fig, path):
    """Write a PNG atomically: a symlink left at ``path`` is replaced, its target never written."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)


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
    _save(fig, path)
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
    _save(fig, path)
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
    _save(fig, path)
    plt.close(fig)
    return path


# -- a study (netspec tune) and a comparison (netspec compare) -----------------------------------------
def save_study_plots(rows, tune, importances, out):
    """history.png, scatter.png (two continuous values, coloured by the objective) and importance.png
    of a study's trial rows (netspec.tuning.trial_rows); returns the paths written ([] without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and r[tune.objective] is not None]
    if not done:
        return []
    paths = [plot_history(plt, done, tune.objective, os.path.join(out, "history.png"))]
    axes = _scatter_axes(tune)
    if axes:
        paths.append(plot_scatter(plt, done, tune, axes, os.path.join(out, "scatter.png")))
    if importances:
        paths.append(plot_importance(plt, importances, tune.objective, os.path.join(out, "importance.png")))
    return paths


def _better(objective):
    return max if objective.endswith("acc") else min


def plot_history(plt, rows, objective, path):
    """Each trial's objective against its number, and the best so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for state, style in (("COMPLETE", dict(marker="o", color="C0")), ("PRUNED", dict(marker="x", color="0.55"))):
        pts = [(r["number"], r[objective]) for r in rows if r["state"] == state]
        if pts:
            ax.scatter(*zip(*pts), label=state.lower(), s=24, **style)
    complete = sorted((r["number"], r[objective]) for r in rows if r["state"] == "COMPLETE")
    if complete:
        better, best, line = _better(objective), None, []
        for n, v in complete:
            best = v if best is None else better(best, v)
            line.append((n, best))
        ax.step(*zip(*line), where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("optimization history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _scatter_axes(tune):
    """The two continuous paths to plot: the learning rate by the weight decay when both are searched."""
    continuous = [p for p, d in tune.space.items() if d.kind in ("log_uniform", "uniform")]
    lr = next((p for p in continuous if p.endswith(".lr")), None)
    wd = next((p for p in continuous if p.endswith(".weight_decay")), None)
    if lr and wd:
        return lr, wd
    return tuple(continuous[:2]) if len(continuous) >= 2 else None


def plot_scatter(plt, rows, tune, axes, path):
    """The book's picture: one value against another, each trial coloured by its objective."""
    x, y = axes
    fig, ax = plt.subplots(figsize=(6.5, 5))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    if pruned:
        ax.scatter([r[x] for r in pruned], [r[y] for r in pruned], marker="x", color="0.6", label="pruned")
    if complete:
        dots = ax.scatter([r[x] for r in complete], [r[y] for r in complete], c=[r[tune.objective] for r in complete],
                          cmap="viridis" if tune.objective.endswith("acc") else "viridis_r", s=40, edgecolors="k",
                          linewidths=0.3)
        fig.colorbar(dots, ax=ax, label=tune.objective)
        best = _better(tune.objective)(complete, key=lambda r: r[tune.objective])
        ax.scatter([best[x]], [best[y]], marker="*", s=250, facecolors="none", edgecolors="red", label="best")
    for axis, p in (("x", x), ("y", y)):
        if tune.space[p].kind == "log_uniform":
            getattr(ax, f"set_{axis}scale")("log")
        getattr(ax, f"set_{axis}label")(p)
    ax.set_title(f"{tune.objective} of each trial")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_importance(plt, importances, objective, path):
    """How much each searched path mattered to the objective (Optuna's PED-ANOVA importance)."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel(f"importance for {objective}")
    ax.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_comparison(runs, path):
    """Overlaid curves of runs (netspec.compare.Run): loss and accuracy against epoch and against seconds.

    The accuracy is the validation set's when a run holds one out, else the test set's (per epoch).
    Returns ``path``; None without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    splits = set()
    for k, run in enumerate(runs):
        m = [e for e in run.metrics if "epoch" in e]
        if not m:
            continue
        epochs = [e["epoch"] for e in m]
        seconds = np.cumsum([e.get("seconds") or 0.0 for e in m]).tolist()
        split = "val" if "val_acc" in m[0] or "val_loss" in m[0] else "test"
        splits.add({"val": "validation", "test": "test"}[split])
        color = f"C{k % 10}"
        loss = [e.get("train_loss") for e in m]
        acc = [e.get(f"{split}_acc") for e in m]
        for col, x in enumerate((epochs, seconds)):
            axes[0][col].plot(x, loss, color=color, label=run.label)
            if any(a is not None for a in acc):
                axes[1][col].plot(x, acc, color=color, label=run.label)
            else:  # a regression run: its loss on the held-out split
                axes[1][col].plot(x, [e.get(f"{split}_loss") for e in m], color=color, linestyle="--",
                                  label=f"{run.label} ({split} loss)")
    which = " / ".join(sorted(splits)) or "validation"
    for col, xlabel in enumerate(("epoch", "seconds of training")):
        axes[0][col].set_ylabel("training loss")
        axes[0][col].set_yscale("log")
        axes[1][col].set_ylabel(f"{which} accuracy")
        for row in (0, 1):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
