"""CLI and trainer options, checked for what they do: evaluate --data and --batch-size,
gradcheck --tol and --seed, the default run directory, train.log_every and train.eval_batch_size.

Tiny float64 specs (one dense layer on 40 mnist-5k digits, or a 1-4-1 network on the
``function`` source) keep each test around a second.
"""
import json
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

import netspec
import netspec.gradcheck
import netspec.rundir
from netspec.cli import main
from netspec.data import load_data
from netspec.executor import Executor


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def classifier_spec(**train):
    """784 -> 10 softmax regression on the first 40 / 30 mnist-5k digits."""
    return {"netspec": 1, "name": "digits", "seed": 2, "dtype": "float64", "input": {"shape": [784]},
            "layers": [{"type": "dense", "name": "dense", "units": 10}], "loss": "softmax_cross_entropy",
            "train": {"data": {"source": "mnist-5k", "flatten": True, "limit_train": 40, "limit_test": 30},
                      "optimizer": {"type": "sgd", "lr": 0.1}, "epochs": 2, "batch_size": 10, **train}}


def regression_spec(**train):
    """1 -> 4 tanh -> 1 on t = x (40 training, 30 test samples): 10 steps of batch 4 per epoch."""
    return {"netspec": 1, "name": "tiny", "seed": 1, "dtype": "float64", "input": {"shape": [1]},
            "layers": [{"type": "dense", "name": "hidden", "units": 4}, {"type": "tanh"},
                       {"type": "dense", "name": "out", "units": 1}],
            "loss": "mse",
            "train": {"data": {"source": "function", "coefficients": [1, 0], "n_train": 40, "n_test": 30},
                      "optimizer": {"type": "sgd", "lr": 0.05}, "epochs": 2, "batch_size": 4, **train}}


def write(path, spec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A trained classifier: (checkpoint path, its History)."""
    out = tmp_path_factory.mktemp("classifier")
    history = netspec.train(classifier_spec(), out=out)
    return out / "model.npz", history


def forward_sizes(monkeypatch):
    """Record len(x) of every test-mode pass (evaluation and prediction batches run the inference graph)."""
    sizes = []
    original = Executor.run

    def run(self, x):
        sizes.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Executor, "run", run)
    return sizes


def expected_classification(checkpoint, x, labels):
    """Loss, accuracy and confusion matrix computed here from the checkpoint's W, b and the labels."""
    params = netspec.load(checkpoint).params
    logits = x.reshape(len(x), -1).astype(np.float64) @ params["dense.W"] + params["dense.b"]
    top = logits.max(axis=1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    loss = float(np.mean(log_norm - logits[np.arange(len(x)), labels]))
    pred = logits.argmax(axis=1)
    cm = [[0] * 10 for _ in range(10)]
    for label, p in zip(labels, pred):
        cm[label][p] += 1
    return loss, int((pred == labels).sum()), cm


@pytest.fixture
def eval_file(tmp_path):
    """An .npz data file whose test set is 13 mnist-5k test digits (from the 100th on): (path, x, labels)."""
    digits = load_data({"source": "mnist-5k"}, dtype="float64")
    x, labels = digits.x_test[100:113], digits.t_test[100:113]
    path = tmp_path / "eval.npz"
    np.savez(path, x_train=x, t_train=labels, x_test=x, t_test=labels)
    return path, x, labels


# ---------------------------------------------------------------- evaluate --data

def test_evaluate_data_json_gives_the_numbers_of_the_predictions_and_labels(capsys, classifier, eval_file):
    checkpoint, _ = classifier
    path, x, labels = eval_file
    rc, out, err = run(capsys, "evaluate", checkpoint, "--data", json.dumps({"source": "npz", "path": str(path)}),
                       "--json")
    assert (rc, err) == (0, "")
    result = json.loads(out)
    loss, correct, cm = expected_classification(checkpoint, x, labels)
    assert 0 < correct < 13  # a test that can tell right from wrong predictions
    assert {k: result[k] for k in ("model", "data", "samples", "dtype")} == {
        "model": str(checkpoint), "data": "npz:eval.npz", "samples": 13, "dtype": "float64"}
    assert result["loss"] == pytest.approx(loss, rel=1e-12)
    assert result["accuracy"] == correct / 13
    assert result["confusion_matrix"] == cm


def test_evaluate_data_file_text_output_with_a_batch_size_not_dividing_the_samples(
        capsys, monkeypatch, classifier, eval_file, tmp_path):
    checkpoint, _ = classifier
    path, x, labels = eval_file
    data_file = tmp_path / "data.yaml"
    data_file.write_text(f"source: npz\npath: {path}\n", encoding="utf-8")
    sizes = forward_sizes(monkeypatch)
    rc, out, err = run(capsys, "evaluate", checkpoint, "--data", data_file, "--batch-size", 4)
    assert (rc, err) == (0, "")
    assert sizes == [4, 4, 4, 1]  # one pass gives the loss, the accuracy and the confusion matrix
    loss, correct, cm = expected_classification(checkpoint, x, labels)
    assert out.splitlines() == [
        f"{checkpoint} on npz:eval.npz test set (13 samples, float64):",
        f"  loss     {loss:.6g}",
        f"  accuracy {correct / 13:.4f}",
        "  confusion matrix (rows: label, columns: prediction)",
        "      " + "".join(f"{j:>4}" for j in range(10)),
    ] + [f"  {i:>3} " + "".join(f"{v:>4}" for v in row) for i, row in enumerate(cm)]

    by_4 = json.loads(run(capsys, "evaluate", checkpoint, "--data", data_file, "--batch-size", 4, "--json")[1])
    whole = json.loads(run(capsys, "evaluate", checkpoint, "--data", data_file, "--json")[1])
    assert by_4["loss"] == pytest.approx(whole["loss"], rel=1e-12)
    assert (by_4["accuracy"], by_4["confusion_matrix"]) == (whole["accuracy"], whole["confusion_matrix"])


def test_evaluate_data_source_name_replaces_the_checkpoints_data(capsys, classifier):
    """Without --data: the spec's test set (30 digits), as the run's final evaluation; --data mnist-5k:
    all 1,000 test digits."""
    checkpoint, history = classifier
    own = json.loads(run(capsys, "evaluate", checkpoint, "--json")[1])
    assert own["samples"] == 30
    assert own["accuracy"] == history.test_acc
    assert own["loss"] == pytest.approx(history.test_loss, rel=1e-12)

    full = json.loads(run(capsys, "evaluate", checkpoint, "--data", "mnist-5k", "--json")[1])
    digits = load_data({"source": "mnist-5k"}, dtype="float64")
    loss, correct, cm = expected_classification(checkpoint, digits.x_test, digits.t_test)
    assert (full["data"], full["samples"]) == ("mnist-5k", 1000)
    assert full["loss"] == pytest.approx(loss, rel=1e-12)
    assert full["accuracy"] == correct / 1000
    assert full["confusion_matrix"] == cm


def test_evaluate_regression_data_is_the_mean_squared_error(capsys, tmp_path):
    netspec.train(regression_spec(), out=tmp_path / "run")
    checkpoint = tmp_path / "run" / "model.npz"
    source = {"source": "function", "coefficients": [2, -1], "low": -1, "high": 1, "n_test": 9, "seed": 5}
    rc, out, err = run(capsys, "evaluate", checkpoint, "--data", json.dumps(source), "--json")
    assert (rc, err) == (0, "")
    result = json.loads(out)
    data = load_data(source, dtype="float64")
    p = netspec.load(checkpoint).params
    y = np.tanh(data.x_test @ p["hidden.W"] + p["hidden.b"]) @ p["out.W"] + p["out.b"]
    assert np.allclose(data.t_test, 2 * data.x_test - 1)
    assert (result["data"], result["samples"], result["accuracy"]) == ("function", 9, None)
    assert "confusion_matrix" not in result
    assert result["loss"] == pytest.approx(float(np.mean((y - data.t_test) ** 2)), rel=1e-12)


# ---------------------------------------------------------------- gradcheck --tol, --seed

GRAD_SPEC = {"netspec": 1, "name": "small", "dtype": "float64", "input": {"shape": [3]},
             "layers": [{"type": "dense", "name": "d1", "units": 4}, {"type": "sigmoid"},
                        {"type": "dense", "name": "d2", "units": 2}],
             "loss": "softmax_cross_entropy"}


def gradcheck_json(capsys, spec, *options):
    rc, out, err = run(capsys, "gradcheck", spec, "--json", *options)
    assert err == ""
    return rc, json.loads(out)


def test_gradcheck_tol_is_the_largest_relative_error_that_passes(capsys, tmp_path):
    spec = write(tmp_path / "small.json", GRAD_SPEC)
    rc, report = gradcheck_json(capsys, spec)
    errors = {name: r["error"] for name, r in report["params"].items()}
    assert (rc, report["ok"], report["tolerance"]) == (0, True, 1e-5)
    second, worst = sorted(set(errors.values()))[-2:]
    assert 0 < second < worst < 1e-6

    rc, at_worst = gradcheck_json(capsys, spec, "--tol", repr(worst))
    assert (rc, at_worst["ok"], at_worst["tolerance"]) == (0, True, worst)

    tol = float(np.sqrt(worst * second))  # between the two largest errors: exactly one array fails
    rc, failing = gradcheck_json(capsys, spec, "--tol", repr(tol))
    assert (rc, failing["ok"], failing["tolerance"]) == (1, False, tol)
    assert {name: r["error"] for name, r in failing["params"].items()} == errors  # the check itself is unchanged

    rc, out, err = run(capsys, "gradcheck", spec, "--tol", repr(tol))
    lines = out.splitlines()
    assert rc == 1
    flags = {line.split()[0]: line.split()[-1] for line in lines[1:-1]}
    assert flags == {name: "FAIL" if e == worst else "ok" for name, e in errors.items()}
    assert lines[-1].startswith(f"FAIL: worst {worst:.2e} (tolerance ")


def test_gradcheck_seed_picks_the_batch_and_the_sampled_elements(capsys, monkeypatch, tmp_path):
    spec = write(tmp_path / "small.json", GRAD_SPEC)
    checked = []
    original = netspec.gradcheck.numerical_gradient

    def numerical_gradient(f, x, h=1e-4, indices=None, smooth=None):
        checked.append(tuple(indices))
        return original(f, x, h=h, indices=indices, smooth=smooth)

    monkeypatch.setattr(netspec.gradcheck, "numerical_gradient", numerical_gradient)

    def check(*options):
        checked.clear()
        rc, report = gradcheck_json(capsys, spec, "--max-elements", 3, *options)
        assert rc == 0
        return report["params"], list(checked)

    seven, seven_idx = check("--seed", 7)
    assert check("--seed", 7) == (seven, seven_idx)  # reproducible
    assert check() == check("--seed", 0)  # the default seed is 0
    eight, eight_idx = check("--seed", 8)
    # d1.W (12 elements), d1.b (4), d2.W (8) are sampled (3 each), d2.b (2) is checked whole
    assert [len(i) for i in seven_idx] == [3, 3, 3, 2] and seven_idx[3] == eight_idx[3] == (0, 1)
    assert seven_idx[:3] != eight_idx[:3]
    assert all(seven[k]["error"] != eight[k]["error"] for k in seven)  # another batch, other errors

    # the same as the Python API with that seed for the batch and for the sampling
    model = netspec.compile(GRAD_SPEC, dtype="float64")
    x, t = netspec.gradcheck.random_batch(model, n=2, seed=7)
    assert netspec.gradcheck.check_model(model, x, t, h=1e-5, max_elements=3, seed=7) == seven


# ---------------------------------------------------------------- the default run directory

def test_default_run_dir_is_runs_name_timestamp_in_the_current_folder(capsys, monkeypatch, tmp_path):
    spec = write(tmp_path / "specs" / "tiny.json", regression_spec())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = time.strftime("%Y%m%d-%H%M%S")
    rc, out, err = run(capsys, "run", spec, "--no-progress")
    after = time.strftime("%Y%m%d-%H%M%S")
    assert (rc, err) == (0, "")
    [name] = [p.name for p in (work / "runs").iterdir()]
    match = re.fullmatch(r"tiny-(\d{8}-\d{6})", name)
    assert match and before <= match.group(1) <= after
    assert {p.name for p in (work / "runs" / name).iterdir()} >= {"model.npz", "metrics.jsonl",
                                                                  "spec.resolved.json"}
    lines = out.splitlines()
    assert lines[0].endswith(f"; run dir runs/{name}")
    assert lines[-1] == f"saved runs/{name}/model.npz"
    assert not (tmp_path / "specs" / "runs").exists()


def test_default_run_dir_gets_a_number_when_taken(capsys, monkeypatch, tmp_path):
    """Runs started in the same second go to <stamp>, <stamp>-2, <stamp>-3; none replaces another."""
    fixed = time.strptime("2024-02-29 23:59:59", "%Y-%m-%d %H:%M:%S")
    monkeypatch.setattr(netspec.rundir, "time", SimpleNamespace(strftime=lambda fmt: time.strftime(fmt, fixed)))
    spec = regression_spec(epochs=1)
    del spec["name"]  # an unnamed spec is called "model"
    path = write(tmp_path / "spec.json", spec)
    saved = []
    for _ in range(3):
        rc, out, err = run(capsys, "run", path, "--quiet", "--no-progress")
        assert (rc, err) == (0, "")
        saved.append(out.splitlines()[-1])
        if len(saved) == 1:
            first = (tmp_path / "runs" / "model-20240229-235959" / "model.npz").read_bytes()
    assert saved == ["saved runs/model-20240229-235959/model.npz", "saved runs/model-20240229-235959-2/model.npz",
                     "saved runs/model-20240229-235959-3/model.npz"]
    assert (tmp_path / "runs" / "model-20240229-235959" / "model.npz").read_bytes() == first


# ---------------------------------------------------------------- train.log_every

def progress_lines(out):
    """('step', n) for 'step N: loss L' lines and ('epoch', n) for epoch lines, in order."""
    lines = []
    for line in out.splitlines():
        if m := re.fullmatch(r"step (\d+): loss (\S+)", line):
            lines.append(("step", int(m.group(1))))
        elif m := re.match(r"epoch (\d+)/\d+  step (\d+)  ", line):
            lines.append(("epoch", int(m.group(2))))
    return lines


def test_log_every_prints_the_loss_at_every_nth_step(capsys, tmp_path):
    spec = write(tmp_path / "tiny.json", regression_spec(log_every=3))
    rc, out, err = run(capsys, "run", spec, "--out", tmp_path / "run", "--no-progress")
    assert (rc, err) == (0, "")
    assert progress_lines(out) == [("step", 3), ("step", 6), ("step", 9), ("epoch", 10),
                                   ("step", 12), ("step", 15), ("step", 18), ("epoch", 20)]


def test_log_every_counts_steps_across_epochs_and_resumes(capsys, tmp_path):
    """Step numbers are the run's: every 7th step with 5 steps per epoch; a resumed run goes on counting."""
    data = {"source": "function", "coefficients": [1, 0], "n_train": 20, "n_test": 30}
    spec = write(tmp_path / "tiny.json", regression_spec(log_every=7, epochs=3, data=data))
    run_dir = tmp_path / "run"
    rc, out, _ = run(capsys, "run", spec, "--out", run_dir, "--no-progress", "--epochs", 2)
    assert rc == 0
    assert progress_lines(out) == [("epoch", 5), ("step", 7), ("epoch", 10)]
    rc, out, _ = run(capsys, "run", "--resume", run_dir, "--no-progress", "--epochs", 6)
    assert rc == 0
    assert progress_lines(out) == [("step", 14), ("epoch", 15), ("epoch", 20), ("step", 21), ("epoch", 25),
                                   ("step", 28), ("epoch", 30)]


def test_log_every_1_logs_each_steps_training_loss(capsys, tmp_path):
    """The logged losses of an epoch average to the epoch's train_loss in metrics.jsonl."""
    spec = write(tmp_path / "tiny.json", regression_spec(log_every=1))
    rc, out, _ = run(capsys, "run", spec, "--out", tmp_path / "run", "--no-progress")
    assert rc == 0
    losses = [float(m.group(2)) for m in re.finditer(r"^step (\d+): loss (\S+)$", out, re.M)]
    assert [int(m.group(1)) for m in re.finditer(r"^step (\d+):", out, re.M)] == list(range(1, 21))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20]
    for epoch, m in enumerate(metrics):
        assert np.mean(losses[10 * epoch:10 * epoch + 10]) == pytest.approx(m["train_loss"], rel=1e-6)


@pytest.mark.parametrize("log_every, flags", [(0, []), (1, ["--quiet"])])
def test_no_step_lines_when_log_every_is_0_or_quiet(capsys, tmp_path, log_every, flags):
    spec = write(tmp_path / "tiny.json", regression_spec(log_every=log_every))
    rc, out, _ = run(capsys, "run", spec, "--out", tmp_path / "run", "--no-progress", *flags)
    assert rc == 0
    assert not re.search(r"^step ", out, re.M)
    assert len(re.findall(r"^epoch ", out, re.M)) == (0 if flags else 2)


# ---------------------------------------------------------------- train.eval_batch_size

def test_eval_batch_size_sets_the_evaluation_batches(monkeypatch):
    """40 training and 30 test samples in batches of 7: each epoch evaluates both sets, the end the
    test set; with eval_samples 20, the epochs evaluate the first 20 of each."""
    sizes = forward_sizes(monkeypatch)
    netspec.train(classifier_spec(eval_batch_size=7))
    assert sizes == ([7, 7, 7, 7, 7, 5] + [7, 7, 7, 7, 2]) * 2 + [7, 7, 7, 7, 2]
    sizes.clear()
    netspec.train(classifier_spec(eval_batch_size=7, eval_samples=20))
    assert sizes == [7, 7, 6, 7, 7, 6] * 2 + [7, 7, 7, 7, 2]


def test_eval_batch_size_does_not_change_the_results():
    runs = {bs: netspec.train(classifier_spec(eval_batch_size=bs)) for bs in (1000, 7, 1)}
    base = runs[1000]
    assert 0 < base.test_acc < 1
    for bs, h in runs.items():
        assert [(m["step"], m["train_loss"], m["train_acc"], m["test_acc"]) for m in h] == \
            [(m["step"], m["train_loss"], m["train_acc"], m["test_acc"]) for m in base], bs
        assert [m["test_loss"] for m in h] == pytest.approx([m["test_loss"] for m in base], rel=1e-12)
        assert h.test_acc == base.test_acc
        assert h.test_loss == pytest.approx(base.test_loss, rel=1e-12)
