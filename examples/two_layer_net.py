"""Seed 3: TwoLayerNet, 784 -> 50 sigmoid -> 10, checked by numerical gradient, then trained.

First compares back-propagation with central differences on a batch of 3 images
(float64; every element of the small arrays, a seeded sample of the large ones,
or fewer with --quick). Then trains specs/two_layer_net.yaml with the seed's
settings (SGD lr 0.1, batch 100 drawn with replacement, 10,000 iterations,
accuracy every 600) on mnist-5k and saves the accuracy curve.
"""
from _shared import gradient_scatter, parse_args, pyplot, saved, spec_path  # before numpy: sets BLAS threads

import time

import numpy as np

import netspec
from netspec.data import load_data
from netspec.gradcheck import numerical_gradient, relative_error, sample_indices


def extra(p):
    p.add_argument("--check-elements", type=int, default=2000,
                   help="elements compared per parameter array (default 2000; all of the smaller arrays)")


args = parse_args(__doc__, extra)
path = spec_path("two_layer_net")
spec = netspec.load_spec(path)
data = load_data(spec.train.data, seed=spec.seed, dtype=np.float64)

# -- 1. numerical vs back-propagated gradient on a small batch ------------------------
model = netspec.compile(spec, dtype="float64")
x, t = data.x_train[:3], data.t_train[:3]
grads = {k: g.copy() for k, g in model.gradient(x, t)[1].items()}
limit = 100 if args.quick else args.check_elements
rng = np.random.default_rng(0)
pairs = {}
print(f"gradient check on {len(x)} training images, float64, h = 1e-4:")
for name, p in model.params.items():
    idx = sample_indices(p.size, limit, rng)
    numeric = numerical_gradient(lambda: model.loss(x, t), p, h=1e-4, indices=idx)
    backprop = grads[name].ravel()[idx]
    pairs[name] = (backprop, numeric)
    print(f"  {name:12s} {len(idx):6d} of {p.size:6d} elements: max |diff| {np.abs(backprop - numeric).max():.2e}, "
          f"relative error {relative_error(backprop, numeric):.2e}")

# -- 2. training with the seed's settings ---------------------------------------------
epochs = 1 if args.quick else None  # --quick: one reporting period of 600 iterations
t0 = time.perf_counter()
history = netspec.train(path, epochs=epochs)
seconds = time.perf_counter() - t0
for m in history:
    print(f"iteration {m['step']:5d}: train acc {m['train_acc']:.4f}, test acc {m['test_acc']:.4f}, "
          f"loss {m['train_loss']:.4f}")
print(f"two_layer_net on mnist-5k after {history[-1]['step']} iterations: "
      f"test accuracy {history.test_acc:.4f} ({seconds:.1f} s)")

plt = pyplot("the gradient comparison and the accuracy curve")
if plt is not None:
    gradient_scatter(plt, pairs, args.out / "two_layer_net_gradient.png", "two_layer_net: gradients")
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [m["step"] for m in history]
    ax.plot(steps, [m["train_acc"] for m in history], marker="o", label="train")
    ax.plot(steps, [m["test_acc"] for m in history], marker="s", linestyle="--", label="test")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("two_layer_net on mnist-5k")
    saved(plt, fig, args.out / "two_layer_net_accuracy.png")
