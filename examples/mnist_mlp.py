"""Seed 7: the PyTorch MNIST MLP (784 -> 1568 -> 1568 -> 10, ReLU, Adam lr 0.01, one image per step).

Trains specs/mnist_mlp.yaml on mnist-5k. Then the seed's bug: its first
ReLU's output was computed and thrown away, so the second layer read the first
layer's raw output. Written as a spec (fc2 fed from fc1 instead of relu1), netspec
refuses it: relu1's output is never used. What the seed actually trained is the
net without that ReLU, which this script trains with the same settings to show
what the bug cost.

Each step updates 3.7 million parameters with Adam, so the spec's 50,000 steps
take 10+ minutes per net on 2 cores; the default here is 5,000 steps per net
(--steps 50000 for the seed's budget; --quick: 100 steps, 200 test images).
"""
from _shared import parse_args, spec_dict  # before numpy: sets BLAS threads

import copy
import time

import yaml

import netspec


def extra(p):
    p.add_argument("--steps", type=int, default=5000, help="single-image steps per net (default 5,000; spec: 50,000)")


args = parse_args(__doc__, extra)
spec = spec_dict("mnist_mlp")
steps = 100 if args.quick else args.steps
spec["train"]["steps"] = steps
spec["train"]["steps_per_epoch"] = min(spec["train"]["steps_per_epoch"], steps)
if args.quick:
    spec["train"]["data"].update(limit_test=200)


def train(spec, what):
    t0 = time.perf_counter()
    history = netspec.train(spec)
    seconds = time.perf_counter() - t0
    print(f"{what}: test accuracy {history.test_acc:.4f} after {history[-1]['step']} steps ({seconds:.0f} s)")
    return history.test_acc


acc = train(spec, "mnist_mlp as specified (ReLU after fc1 and fc2)")

# The bug as a spec: fc2 reads fc1 directly, so relu1 computes a result nobody uses.
buggy = copy.deepcopy(spec)
buggy["name"] = "mnist_mlp_bug"
buggy["layers"][2]["inputs"] = ["fc1"]
bug_path = args.out / "mnist_mlp_bug.yaml"
bug_path.write_text(yaml.safe_dump(buggy, sort_keys=False), encoding="utf-8")
try:
    netspec.compile(str(bug_path))
except netspec.NetspecError as exc:
    print(f"the seed's bug as a spec is rejected ({type(exc).__name__}):\n  {exc}")
else:
    raise SystemExit("netspec accepted a spec whose relu1 output is never used")

# What the buggy script really trained: fc1 -> fc2 with no activation in between.
without = copy.deepcopy(spec)
without["name"] = "mnist_mlp_no_relu1"
del without["layers"][1]
acc_bug = train(without, "the net the bug trained (no ReLU after fc1)")
print(f"the discarded activation cost {100 * (acc - acc_bug):+.2f} points of test accuracy "
      f"({acc:.4f} with it, {acc_bug:.4f} without)")
