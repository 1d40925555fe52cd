"""Seed 2: simpleNet, one 2x3 weight matrix into softmax cross-entropy.

Compiles specs/simple_net.yaml in float64 and prints the gradient of the loss
with respect to W twice: by central differences (h = 1e-4, as the seed) and by
back-propagation. They agree to 1e-7.
"""
from _shared import gradient_scatter, parse_args, pyplot, spec_path  # before numpy: sets BLAS threads

import numpy as np

import netspec
from netspec.gradcheck import numerical_gradient

args = parse_args(__doc__)
spec = netspec.load_spec(spec_path("simple_net"))
model = netspec.compile(spec, dtype="float64")
x = np.array(spec.train.data.x, dtype=np.float64)
t = np.array(spec.train.data.t)
W = model.params["W.W"]

print(f"x = {x[0].tolist()}, label = {int(t[0])}")
print("W =\n", W.round(6))
print(f"loss = {model.loss(x, t):.10f}")
numeric = numerical_gradient(lambda: model.loss(x, t), W, h=1e-4)
backprop = model.gradient(x, t)[1]["W.W"].copy()
np.set_printoptions(precision=10, suppress=True)
print("numerical gradient dL/dW (central differences, h = 1e-4):\n", numeric)
print("back-propagated gradient dL/dW:\n", backprop)
diff = float(np.abs(numeric - backprop).max())
print(f"max |numerical - backprop| = {diff:.3e} ({'agree' if diff <= 1e-7 else 'DISAGREE'} to 1e-7)")

plt = pyplot("the gradient comparison")
if plt is not None:
    gradient_scatter(plt, {"W": (backprop, numeric)}, args.out / "simple_net_gradient.png",
                     "simple_net: dL/dW")
