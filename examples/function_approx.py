"""Seed 6: fit y = x^3 + x^2 - x - 1 on [-5, 5] with a 1 -> 6 ReLU -> 1 net, one sample per step.

Trains specs/function_approx.yaml (Adam lr 0.01, 10,000 single samples) and, as
the seed first did, the same net with lr 0.001. Prints the mean squared error
over an even grid in the middle of the range (|x| <= 2.5) and at its ends
(|x| >= 4), and saves the fit next to the true curve. --quick trains 2,000 steps.
"""
from _shared import parse_args, pyplot, saved, spec_dict  # before numpy: sets BLAS threads

import sys

import numpy as np

import netspec

args = parse_args(__doc__)
spec = spec_dict("function_approx")
coefficients = spec["train"]["data"]["coefficients"]
if args.quick:
    spec["train"]["steps"] = 2000

grid = np.linspace(-5, 5, 1001)[:, None]
truth = np.polyval(coefficients, grid)
middle, ends = np.abs(grid[:, 0]) <= 2.5, np.abs(grid[:, 0]) >= 4


def mse(y, mask):
    return float(np.mean((y[mask] - truth[mask]) ** 2))


fits = {}
for lr in (0.001, spec["train"]["optimizer"]["lr"]):
    spec["train"]["optimizer"]["lr"] = lr
    history = netspec.train(spec, progress=sys.stderr.isatty())
    y = history.model.predict(grid)
    fits[lr] = y
    print(f"lr {lr:g}: {history[-1]['step']} steps, test MSE {history.test_loss:.3f}; on the grid: "
          f"middle (|x| <= 2.5) MSE {mse(y, middle):.3f}, ends (|x| >= 4) MSE {mse(y, ends):.3f}, "
          f"all {mse(y, np.ones(len(grid), bool)):.3f}")
print(f"true curve: y spans {truth[middle].min():.1f}..{truth[middle].max():.1f} in the middle, "
      f"{truth.min():.1f}..{truth.max():.1f} over [-5, 5]")

plt = pyplot("the fit")
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(grid, truth, color="black", linewidth=2, label="x^3 + x^2 - x - 1")
    for lr, y in fits.items():
        ax.plot(grid, y, linestyle="--", label=f"1-6-1 ReLU net, Adam lr {lr:g}")
    ax.axvspan(-2.5, 2.5, color="grey", alpha=0.1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend()
    ax.set_title("function_approx: the fit over [-5, 5] (middle shaded)")
    saved(plt, fig, args.out / "function_approx_fit.png")
