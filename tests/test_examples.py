"""The example scripts, each run in --quick mode in a subprocess, and the long accuracy targets (marked `accuracy`).

The quick runs check the facts each example prints (the converged prediction,
the gradient agreement, the rejected buggy spec...), not accuracies: a few
steps on a few images prove the script works end to end, nothing more. The
accuracy targets live in benchmarks/accuracy.py; the ``accuracy`` tests below call
the same functions and assert the thresholds.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from extras import has

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def run_example(name, out, *args, extra_path=(), timeout=180):
    env = dict(os.environ, MPLBACKEND="Agg")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=str(out.parent))
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def has_matplotlib():
    return has("matplotlib")



def test_every_seed_has_an_example():
    names = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert names == {"forward_example", "simple_net", "two_layer_net", "simple_convnet", "deep_convnet",
                     "function_approx", "mnist_mlp"}
    for name in names:
        assert (REPO / "specs" / f"{name}.yaml").exists()


def test_forward_example_converges_onto_the_target(tmp_path):
    out = run_example("forward_example", tmp_path)
    steps = [int(s) for s in re.findall(r"^step\s+(\d+):", out, re.M)]
    assert steps == list(range(0, 3001, 150))  # every 150 steps, as the seed printed
    final = re.search(r"final prediction \[(.*?)\]", out).group(1)
    y = [float(v) for v in final.split(",")]
    assert abs(y[0] - 0.2) <= 1e-3 and abs(y[1] - 0.1) <= 1e-3
    assert "within 1e-3" in out
    assert (tmp_path / "forward_example_loss.png").exists() == has_matplotlib()


def test_simple_net_gradients_agree(tmp_path):
    out = run_example("simple_net", tmp_path)
    diff = float(re.search(r"max \|numerical - backprop\| = (\S+)", out).group(1))
    assert diff <= 1e-7
    assert "numerical gradient dL/dW" in out and "back-propagated gradient dL/dW" in out


def test_two_layer_net_gradient_check_and_training(tmp_path):
    out = run_example("two_layer_net", tmp_path)
    errors = [float(e) for e in re.findall(r"relative error (\S+)", out)]
    assert len(errors) == 4 and max(errors) < 1e-6
    # 600 SGD steps reach about 0.79 (both backends): far above chance (0.1) for a working net
    final = re.search(r"two_layer_net on mnist-5k after 600 iterations: test accuracy (0\.\d+)", out)
    logged = re.search(r"iteration   600: train acc (0\.\d+), test acc (0\.\d+), loss (\d+\.\d+)", out)
    assert final and logged
    assert float(final.group(1)) >= 0.7 and float(logged.group(1)) >= 0.7
    assert logged.group(2) == final.group(1)  # the epoch's evaluation covers the same 1,000 test images
    assert float(logged.group(3)) < 2.0  # below the loss of a uniform guess, ln 10 = 2.30
    if has_matplotlib():
        assert (tmp_path / "two_layer_net_accuracy.png").exists()
        assert (tmp_path / "two_layer_net_gradient.png").exists()


def test_simple_convnet_trains_and_draws(tmp_path):
    out = run_example("simple_convnet", tmp_path)
    # 5 Adam steps on 500 images stay near chance, so the deterministic result itself is checked
    # (identical on both kernel backends): 25 of the 200 test images right
    assert re.search(r"^test accuracy: 0\.1250 \(25/200\), test loss 2\.2864$", out, re.M)
    assert re.search(r"^epoch 1/1  step 5  loss 2\.3  train acc 0\.1340  test acc 0\.1250  ", out, re.M)
    assert re.search(r"simple_convnet: test accuracy 0\.1250 after 1 epochs", out)
    if has_matplotlib():
        assert (tmp_path / "simple_convnet_curves.png").exists()
        assert (tmp_path / "simple_convnet_misclassified.png").exists()


def test_deep_convnet_misclassified_and_float16(tmp_path):
    out = run_example("deep_convnet", tmp_path)
    # one step on 100 images stays near chance, so the deterministic result itself is checked
    # (identical on both kernel backends)
    assert re.search(r"^test accuracy: 0\.1400 \(14/100\), test loss 2\.2719$", out, re.M)
    assert re.search(r"deep_convnet: test accuracy 0\.1400 after 1 epochs", out)
    accs = {d: float(a) for d, a in re.findall(r"(float16|float32|float64): accuracy (\S+)", out)}
    assert accs == {"float16": 0.1, "float32": 0.1, "float64": 0.1}  # 4 of the first 40 test images
    assert re.search(r"float16 vs float32: \+0\.00 points lost \(within 0\.2\)", out)
    # the float32 answers are 36 of 40 wrong: the list shows the first 20, each a real mistake
    listed = re.search(r"first (\d+) misclassified test images.*\n  (.*)", out)
    assert listed and int(listed.group(1)) == 20
    pairs = re.findall(r"(\d+): (\d) -> (\d)", listed.group(2))
    assert len(pairs) == 20 and all(label != pred for _, label, pred in pairs)
    indices = [int(i) for i, _, _ in pairs]
    assert indices == sorted(indices) and indices[-1] < 40
    if has_matplotlib():
        assert (tmp_path / "deep_convnet_misclassified.png").exists()


def test_function_approx_reports_middle_and_ends(tmp_path):
    out = run_example("function_approx", tmp_path)
    fits = re.findall(r"lr (\S+): .*middle \(\|x\| <= 2\.5\) MSE ([\d.]+), ends \(\|x\| >= 4\) MSE ([\d.]+)", out)
    assert [lr for lr, _, _ in fits] == ["0.001", "0.01"]
    _, middle, ends = fits[-1]
    assert float(ends) > float(middle)  # the seed's observation: good in the middle, poor at the ends


def test_mnist_mlp_rejects_the_seed_bug(tmp_path):
    out = run_example("mnist_mlp", tmp_path)
    assert "the seed's bug as a spec is rejected (SpecError)" in out
    assert "mnist_mlp_bug.yaml:" in out and "the output of layer 'relu1' is never used" in out
    # 100 single-image Adam steps: about 0.46 with relu1 and chance (0.095) without, on both backends
    accs = [float(a) for a in re.findall(r": test accuracy (0\.\d+) after 100 steps", out)]
    assert len(accs) == 2 and accs[0] >= 0.3 and accs[0] - accs[1] >= 0.2
    cost = re.search(r"the discarded activation cost ([+-]\d+\.\d+) points of test accuracy "
                     r"\((0\.\d+) with it, (0\.\d+) without\)", out)
    assert cost and [float(cost.group(2)), float(cost.group(3))] == accs
    assert float(cost.group(1)) == pytest.approx(100 * (accs[0] - accs[1]), abs=0.005)


def test_examples_run_without_matplotlib(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    out = run_example("simple_net", tmp_path / "out", extra_path=[blocker])
    assert "matplotlib is not installed: skipping the gradient comparison" in out
    assert not list((tmp_path / "out").glob("*.png"))


# -- the accuracy targets (benchmarks/accuracy.py), hours in total: pytest -m accuracy --------------

def accuracy_module():
    spec = importlib.util.spec_from_file_location("netspec_accuracy", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.accuracy
def test_two_layer_net_reaches_90_percent():
    row = accuracy_module().two_layer_net(None)["two_layer_net"]
    assert row["value"] >= 0.90, row


@pytest.mark.accuracy
def test_simple_convnet_reaches_97_percent():
    row = accuracy_module().simple_convnet(None)["simple_convnet"]
    assert row["value"] >= 0.97, row


@pytest.mark.accuracy
def test_function_approx_is_worse_at_the_ends():
    row = accuracy_module().function_approx(None)["function_approx"]
    assert row["value"]["ends"] > row["value"]["middle"], row


@pytest.mark.accuracy
def test_mnist_mlp_bug_costs_accuracy():
    rows = accuracy_module().mnist_mlp(None)
    assert rows["mnist_mlp"]["value"] > rows["mnist_mlp_bug"]["value"], rows


@pytest.mark.accuracy
def test_deep_convnet_fashion_reaches_92_5_percent_and_float16_holds(tmp_path):
    rows = accuracy_module().fashion(SimpleNamespace(runs=str(tmp_path)))
    assert rows["fashion"]["value"] >= 0.925, rows["fashion"]
    acc = rows["float16"]["value"]
    assert acc["float32"] - acc["float16"] <= 0.002, acc
