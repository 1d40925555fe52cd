"""Training end to end: convergence of the seed toy nets, run directories, resume, divergence, data checks."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import netspec
from netspec.checkpoint import read_checkpoint
from netspec.cli import main
from netspec.runner import resume_trainer, trainer_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(ROOT, "specs")


def small_conv(epochs=4, **train):
    """A small conv net with dropout on 400 mnist-5k digits: seconds to train."""
    cfg = {"data": {"source": "mnist-5k", "limit_train": 400, "limit_test": 200},
           "optimizer": {"type": "adam", "lr": 0.002}, "epochs": epochs, "batch_size": 50}
    cfg.update(train)
    return {"name": "small_conv", "seed": 3, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 4, "kernel": 4, "stride": 2},
                       {"type": "relu"}, {"type": "maxpool2d", "size": 2},
                       {"type": "dense", "units": 16}, {"type": "relu"},
                       {"type": "dropout", "ratio": 0.3}, {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy", "train": cfg}


def params_of(path):
    _, arrays = read_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param/", "buffer/", "optim/"))}


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_forward_example_converges_onto_target():
    h = netspec.train(os.path.join(SPECS, "forward_example.yaml"))
    y = h.model.predict(np.array([[0.5, 0.8]]))
    np.testing.assert_allclose(y, [[0.2, 0.1]], atol=1e-3)
    assert [m["step"] for m in h][:3] == [150, 300, 450] and h[-1]["step"] == 3000
    losses = [m["train_loss"] for m in h]
    assert all(b < a for a, b in zip(losses, losses[1:]))  # gradient descent on one sample: monotone


def test_forward_example_first_step_by_hand():
    """One SGD step, computed here independently with the chain rule."""
    W1 = np.array([[0.1, 0.2], [0.3, 0.1]]); b1 = np.array([0.1, 0.2])
    W2 = np.array([[0.4, 0.5], [0.1, 0.3]]); b2 = np.array([0.3, 0.4])
    x = np.array([0.5, 0.8]); t = np.array([0.2, 0.1])
    sig = lambda z: 1 / (1 + np.exp(-z))
    h = sig(x @ W1 + b1); y = sig(h @ W2 + b2)
    dy = 2 * (y - t) / 2 * y * (1 - y)
    dh = (dy @ W2.T) * h * (1 - h)
    expected_W1 = W1 - 0.1 * np.outer(x, dh)
    expected_W2 = W2 - 0.1 * np.outer(h, dy)
    spec = netspec.load_spec(os.path.join(SPECS, "forward_example.yaml"))
    tr = trainer_for(spec, save=False, quiet=True)
    tr.total_steps = 1
    tr.run()
    np.testing.assert_allclose(tr.model.params["hidden.W"], expected_W1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tr.model.params["output.W"], expected_W2, rtol=0, atol=1e-15)


def test_function_approx_fits_the_middle():
    h = netspec.train(os.path.join(SPECS, "function_approx.yaml"))
    x = np.linspace(-2, 2, 201)[:, None]
    y = h.model.predict(x)
    t = x**3 + x**2 - x - 1
    mse_mid = float(np.mean((y - t) ** 2))
    xe = np.concatenate([np.linspace(-5, -4, 50), np.linspace(4, 5, 50)])[:, None]
    mse_ends = float(np.mean((h.model.predict(xe) - (xe**3 + xe**2 - xe - 1)) ** 2))
    # the target's variance on [-2, 2] is about 12: a fit must do far better than the mean
    assert mse_mid < 3.0, mse_mid
    assert mse_ends > mse_mid  # as the seed observed: worse at the ends


def test_run_dir_contents_and_determinism(tmp_path):
    h1 = netspec.train(small_conv(epochs=2), out=tmp_path / "a")
    h2 = netspec.train(small_conv(epochs=2), out=tmp_path / "b")
    files = sorted(os.listdir(tmp_path / "a"))
    assert {"spec.resolved.json", "metrics.jsonl", "model.npz"} <= set(files)
    lines = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "step", "train_loss", "train_acc", "test_acc", "test_loss", "lr", "seconds"}
    strip = lambda h: [{k: v for k, v in m.items() if k != "seconds"} for m in h]
    assert strip(h1) == strip(h2)
    assert_same_arrays(params_of(tmp_path / "a" / "model.npz"), params_of(tmp_path / "b" / "model.npz"))
    resolved = json.load(open(tmp_path / "a" / "spec.resolved.json"))
    assert resolved["layers"][0]["name"] == "conv1" and resolved["train"]["sampling"] == "shuffle"
    assert resolved["train"]["optimizer"] == {"type": "adam", "lr": 0.002, "beta1": 0.9, "beta2": 0.999,
                                              "eps": 1e-7, "weight_decay": 0.0, "decay_bias_and_norm": True}


def test_resume_in_process_is_bit_identical(tmp_path):
    netspec.train(small_conv(epochs=4), out=tmp_path / "full")
    netspec.train(small_conv(epochs=2), out=tmp_path / "part")
    tr = resume_trainer(str(tmp_path / "part"), epochs=4, quiet=True)
    assert tr.step == 16 and tr.epoch == 2
    tr.run()
    assert_same_arrays(params_of(tmp_path / "full" / "model.npz"), params_of(tmp_path / "part" / "model.npz"))
    lines = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")]
    assert [l["epoch"] for l in lines] == [1, 2, 3, 4]


def _spawn_run(spec_path, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "netspec", "run", str(spec_path), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_epochs(out, n, proc, timeout=120):
    path = out / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("run did not reach the epoch in time")


@pytest.mark.parametrize("how", ["kill9", "ctrl_c"])
def test_interrupted_run_resumes_bit_identical(tmp_path, how):
    import yaml
    # 100 epochs of ~10 ms: the signal, sent once 2 epochs are logged, lands mid-run with
    # about a second to spare even when another process competes for the cores.
    epochs = 100
    spec = small_conv(epochs=epochs)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    netspec.train(str(spec_path), out=tmp_path / "full")
    proc = _spawn_run(spec_path, tmp_path / "cut")
    _wait_for_epochs(tmp_path / "cut", 2, proc)
    proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if how == "ctrl_c":
        assert proc.returncode == 130 and "Traceback" not in err
        assert "netspec run --resume" in out + err
        assert not _temporaries(tmp_path / "cut")
    else:
        assert proc.returncode == -signal.SIGKILL
        # SIGKILL may land inside save_checkpoint: its temporary stays (by design) until the
        # next run on the directory removes it; the checkpoint itself is always whole.
        assert all(re.fullmatch(r"\.model-[a-z0-9_]+\.npz\.tmp", f) for f in _temporaries(tmp_path / "cut"))
    meta, _ = read_checkpoint(tmp_path / "cut" / "model.npz")
    cut_step = meta["trainer"]["step"]
    assert 0 < cut_step < epochs * 8
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert not _temporaries(tmp_path / "cut")
    assert_same_arrays(params_of(tmp_path / "full" / "model.npz"), params_of(tmp_path / "cut" / "model.npz"))


def _temporaries(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    spec = {"name": "diverge", "input": {"shape": [1]},
            "layers": [{"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 1}],
            "loss": "mse",
            "train": {"data": {"source": "function", "coefficients": [1, 0, 0, 0], "n_train": 64, "n_test": 16},
                      "optimizer": {"type": "sgd", "lr": 1e6}, "epochs": 50, "batch_size": 8,
                      "steps_per_epoch": 1}}
    with pytest.raises(netspec.TrainingDiverged) as exc:
        netspec.train(spec, out=tmp_path / "run")
    msg = str(exc.value)
    assert "loss is" in msg and "step" in msg and "parameters were not updated" in msg
    ckpt = tmp_path / "run" / "model.npz"
    assert f"{ckpt}" in msg and "is intact" in msg
    meta, arrays = read_checkpoint(ckpt)
    assert all(np.all(np.isfinite(v)) for k, v in arrays.items() if k.startswith("param/"))
    netspec.load(ckpt)  # still a valid, loadable model
    # and through the CLI: exit 2, no traceback
    import yaml
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["run", str(p), "--out", str(tmp_path / "cli"), "--quiet"]) == 2
    assert "training diverged" in capsys.readouterr().err


def test_data_of_wrong_shape_is_a_clear_error(tmp_path, capsys):
    spec = small_conv()
    spec["input"] = {"shape": [3, 32, 32]}
    with pytest.raises(netspec.DataError, match=r"\(train\): an array shaped \[\d+, 1, 28, 28\] does not fit the model input \[3, 32, 32\]"):
        netspec.train(spec)
    spec = small_conv()
    spec["layers"][-1]["units"] = 5
    with pytest.raises(netspec.DataError, match=r"labels range over 0\.\.9, but the model outputs 5 classes"):
        netspec.train(spec)


def test_offline_mnist_gives_instructions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NETSPEC_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = small_conv()
    spec["train"]["data"] = {"source": "mnist"}
    import yaml
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["run", str(p), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "netspec data fetch mnist" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err


def test_sampling_with_replacement_and_steps_budget():
    spec = small_conv(epochs=None, steps=30, sampling="replacement", steps_per_epoch=10)
    h = netspec.train(spec)
    assert [m["step"] for m in h] == [10, 20, 30]


def test_early_stopping_stops():
    spec = small_conv(epochs=30, optimizer={"type": "sgd", "lr": 1e-9},
                      early_stopping={"metric": "test_acc", "patience": 2})
    h = netspec.train(spec)
    assert h.stopped and len(h) == 3  # epoch 1 sets the best; 2 and 3 do not improve


def test_lr_schedule_is_applied_per_epoch():
    spec = small_conv(epochs=3, schedule={"type": "step", "step_size": 1, "gamma": 0.5})
    h = netspec.train(spec)
    assert [m["lr"] for m in h] == [0.002, 0.001, 0.0005]


def test_augmentation_changes_training_but_stays_deterministic():
    plain = netspec.train(small_conv(epochs=1))
    aug1 = netspec.train(small_conv(epochs=1, augment={"shift": 2, "rotate": 10}))
    aug2 = netspec.train(small_conv(epochs=1, augment={"shift": 2, "rotate": 10}))
    assert aug1[0]["train_loss"] == aug2[0]["train_loss"] != plain[0]["train_loss"]


def test_evaluate_and_predict_commands(tmp_path, capsys):
    netspec.train(small_conv(epochs=2), out=tmp_path / "r")
    ckpt = str(tmp_path / "r" / "model.npz")
    assert main(["evaluate", ckpt, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 200 == res["samples"]
    assert res["accuracy"] == pytest.approx(np.trace(cm) / 200)
    assert main(["evaluate", ckpt, "--json", "--dtype", "float16"]) == 0
    res16 = json.loads(capsys.readouterr().out)
    assert res16["dtype"] == "float16" and abs(res16["accuracy"] - res["accuracy"]) <= 0.02
    x = netspec.data.load_data({"source": "mnist-5k"}).x_test[:4]
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", ckpt, str(tmp_path / "x.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = netspec.load(ckpt)
    np.testing.assert_allclose(out["outputs"], model.predict(x), rtol=1e-6)
    assert out["argmax"] == model.predict(x).argmax(axis=1).tolist()
    assert main(["predict", ckpt, json.dumps(x[:1].tolist())]) == 0
    assert capsys.readouterr().out.startswith("0: ")
    assert main(["predict", ckpt, "[1, 2, 3]"]) == 2
    assert "does not fit the model input" in capsys.readouterr().err


def test_metrics_every_epoch_even_between_checkpoints(tmp_path):
    netspec.train(small_conv(epochs=3, checkpoint_every=2), out=tmp_path)
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    meta, _ = read_checkpoint(tmp_path / "model.npz")
    assert meta["trainer"]["epoch"] == 3  # the last epoch is always checkpointed


def test_a_callback_can_stop_the_run(tmp_path):
    def budget(trainer, metrics):
        if metrics["epoch"] == 2:
            trainer.stop("budget reached")

    h = netspec.train(small_conv(epochs=5), out=tmp_path, callbacks=[budget])
    assert len(h) == 2 and h.stopped == "budget reached"
    meta, _ = read_checkpoint(tmp_path / "model.npz")
    assert meta["trainer"]["epoch"] == 2  # the stopping epoch is checkpointed


def _inline_regression(t, t_test=None):
    x = [[v / 10] for v in range(-10, 10)]
    data = {"source": "inline", "x": x, "t": t}
    if t_test is not None:
        data.update(x_test=x[:3], t_test=t_test)
    return {"name": "inline_reg", "input": {"shape": [1]}, "loss": "mse",
            "layers": [{"type": "dense", "units": 4}, {"type": "tanh"}, {"type": "dense", "units": 1}],
            "train": {"data": data, "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 5}}


def test_targets_shaped_n_for_a_one_unit_output_train(tmp_path, capsys):
    """Inline targets (N,) for an output of shape (1,) are one value per sample: accepted everywhere."""
    spec = _inline_regression([v / 10 for v in range(-10, 10)])
    h = netspec.train(spec)
    assert len(h) == 2 and np.isfinite(h.test_loss)
    path = tmp_path / "reg.json"
    path.write_text(json.dumps(spec))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "test loss" in capsys.readouterr().out


def test_targets_that_cannot_fit_are_a_data_error_not_a_traceback(tmp_path, capsys):
    spec = _inline_regression([[0.0, 1.0]] * 20)
    with pytest.raises(netspec.DataError, match=r"data 'inline' \(train\): targets are shaped \[2\] per sample, "
                                                r"but the model outputs \[1\] \(loss mse\)"):
        netspec.train(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data 'inline' (train): targets are shaped [2]") and "Traceback" not in err


@pytest.mark.parametrize("spec_name,epochs", [("simple_convnet", 2), ("two_layer_net", 1), ("deep_convnet", 2)])
def test_float16_accuracy_within_0_2_points_of_float32(spec_name, epochs):
    """Shipped specs, briefly trained: float16 inference changes at most 2 of the 1,000 test answers."""
    from netspec.data import load_data
    h = netspec.train(os.path.join(SPECS, f"{spec_name}.yaml"), epochs=epochs)
    data = load_data(h.model.spec.train.data)
    half = netspec.compile(h.model.spec, dtype="float16")
    half.load_arrays({**h.model.params, **h.model.buffers})
    acc32 = h.model.accuracy(data.x_test, data.t_test)
    acc16 = half.accuracy(data.x_test, data.t_test)
    assert acc32 > 0.7 and abs(acc16 - acc32) <= 0.002, (acc32, acc16)


def test_label_smoothing_trains_on_smoothed_targets_and_evaluates_on_labels():
    spec = small_conv(epochs=1, label_smoothing=0.1)
    tr = trainer_for(spec, save=False, quiet=True)
    idx = np.arange(6)
    t = tr.t_train[idx]
    smooth = tr._smoothed(t)
    assert smooth.shape == (6, 10) and np.allclose(smooth.sum(axis=1), 1.0)
    np.testing.assert_allclose(smooth[np.arange(6), t], 0.9 + 0.01)
    tr.model.set_rng(np.random.default_rng(0))
    want = tr.model.loss(tr.x_train[idx], smooth, train=True)
    tr.model.set_rng(np.random.default_rng(0))
    assert tr.train_step(idx) == pytest.approx(want, rel=1e-6)
    h = tr.run()
    # evaluation uses the true labels: the accuracy and loss recomputed from them, not from smoothed targets
    x, labels = tr.x_test, tr.t_test
    assert labels.shape == (200,) and labels.dtype.kind == "i"
    pred = h.model.predict(x).argmax(axis=1)
    assert h.test_acc == np.count_nonzero(pred == labels) / 200 == h[-1]["test_acc"]
    train_pred = h.model.predict(tr.x_train).argmax(axis=1)
    assert h[-1]["train_acc"] == np.count_nonzero(train_pred == tr.t_train) / 400
    assert h.test_loss == pytest.approx(h.model.loss(x, labels), rel=1e-6)
    assert h[-1]["test_loss"] == h.test_loss  # the epoch's evaluation: the same model, set and labels
    assert h.test_loss != pytest.approx(h.model.loss(x, tr._smoothed(labels)), rel=1e-3)
    bad = small_conv(epochs=1, label_smoothing=0.1)
    bad["loss"], bad["layers"][-1]["units"] = "mse", 10
    with pytest.raises(netspec.SpecError, match=r"train\.label_smoothing: label smoothing needs loss "
                                                r"softmax_cross_entropy, not mse"):
        netspec.load_spec(bad)
