"""Seed 5: DeepConvNet (six 3x3 convolutions, He init, dropout), its mistakes, and float16 inference.

Trains specs/deep_convnet.yaml on mnist-5k, or evaluates an already trained
checkpoint with --model (e.g. the Fashion-MNIST run of
specs/deep_convnet_fashion.yaml). Then it lists the first 20 misclassified test
images and draws them in a 4x5 grid (label -> prediction), and re-runs
inference with every parameter and the input cast to float16, float32 and float64.

The spec says 20 epochs; the default here is 8, to stay within a few minutes on
2 cores (--epochs 20 for the full run). --quick: one step on 100 images, and the
dtype comparison on 40 test images.
"""
from _shared import misclassified, misclassified_grid, parse_args, pyplot, spec_dict  # before numpy: sets BLAS threads

import time

import numpy as np

import netspec
from netspec.data import load_data

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def extra(p):
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8; the spec's full run is 20)")
    p.add_argument("--model", help="evaluate this trained model.npz instead of training")
    p.add_argument("--test-images", type=int, help="use only the first N test images (float16 inference is slow)")


def recast(model, dtype):
    """The same network with every parameter (and buffer) cast to ``dtype``."""
    other = netspec.compile(model.spec, dtype=dtype)
    other.load_arrays({**model.params, **model.buffers})
    return other


args = parse_args(__doc__, extra)
if args.model:
    model = netspec.load(args.model, dtype="float32")
    data_spec = model.spec.train.data
    print(f"loaded {args.model} ({model.spec.name}, trained on {data_spec.source})")
else:
    spec = spec_dict("deep_convnet")
    epochs = args.epochs
    if args.quick:
        spec["train"]["data"].update(limit_train=100, limit_test=100)
        epochs = 1
    t0 = time.perf_counter()
    history = netspec.train(spec, epochs=epochs, quiet=False)
    seconds = time.perf_counter() - t0
    model, data_spec = history.model, spec["train"]["data"]
    print(f"deep_convnet: test accuracy {history.test_acc:.4f} after {len(history)} epochs "
          f"({seconds:.0f} s, {seconds / len(history):.1f} s per epoch)")

data = load_data(data_spec, dtype=np.float64)
if args.quick and args.test_images is None:
    args.test_images = 40  # float16 runs without BLAS: tens of times slower than float32
x, t = data.x_test[:args.test_images], data.t_test[:args.test_images]
names = FASHION if data.name == "fashion-mnist" else None

wrong, pred = misclassified(model, x.astype(np.float32), t)
label = (lambda k: names[k]) if names else str
print(f"first {len(wrong)} misclassified test images (index: label -> prediction):")
print("  " + ", ".join(f"{i}: {label(t[i])} -> {label(pred[i])}" for i in wrong))

print(f"inference on {len(t)} test images with parameters and input cast to each dtype:")
acc = {}
for dtype in ("float16", "float32", "float64"):
    m = recast(model, dtype)
    t0 = time.perf_counter()
    acc[dtype] = m.accuracy(x.astype(dtype), t, batch_size=500)
    print(f"  {dtype}: accuracy {acc[dtype]:.4f} ({time.perf_counter() - t0:.1f} s)")
drop = 100 * (acc["float32"] - acc["float16"])
print(f"float16 vs float32: {drop:+.2f} points lost ({'within' if drop <= 0.2 else 'MORE than'} 0.2)")

plt = pyplot("the misclassified grid")
if plt is not None:
    misclassified_grid(plt, x, t, pred, wrong, args.out / "deep_convnet_misclassified.png",
                       f"deep_convnet on {data.name}: first misclassified test images (label -> prediction)",
                       names)
