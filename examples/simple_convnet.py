"""Seed 4: SimpleConvNet (conv 30@5x5 -> ReLU -> pool -> 100 ReLU -> 10) on mnist-5k.

Trains specs/simple_convnet.yaml as written (Adam; the spec sets the epochs,
augmentation and learning-rate schedule), prints the per-epoch accuracies and
the final test accuracy over all 1,000 test images, and saves the loss/accuracy
curves and the first 20 misclassified test images. --quick trains one epoch on
500 images.
"""
from _shared import (curves, misclassified, misclassified_grid, parse_args, pyplot,  # before numpy:
                     spec_dict)  # it sets the BLAS thread count

import time

import netspec

args = parse_args(__doc__)
spec = spec_dict("simple_convnet")
if args.quick:
    spec["train"]["data"].update(limit_train=500, limit_test=200)
    spec["train"]["epochs"] = 1

t0 = time.perf_counter()
history = netspec.train(spec, quiet=False)
seconds = time.perf_counter() - t0
model = history.model
print(f"simple_convnet: test accuracy {history.test_acc:.4f} after {len(history)} epochs "
      f"({seconds:.0f} s, {seconds / len(history):.1f} s per epoch)")

plt = pyplot("the curves and the misclassified grid")
if plt is not None:
    from netspec.data import load_data
    data = load_data(spec["train"]["data"], dtype=model.dtype)
    wrong, pred = misclassified(model, data.x_test, data.t_test)
    curves(plt, history, args.out / "simple_convnet_curves.png", "simple_convnet on mnist-5k")
    misclassified_grid(plt, data.x_test, data.t_test, pred, wrong, args.out / "simple_convnet_misclassified.png",
                       "simple_convnet: first misclassified test digits (label -> prediction)")
