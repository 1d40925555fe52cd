"""The validation split: held out of the training set only, seeded, kept across a resume; per-epoch
reports use it and the test set is read once, at the end; a spec without it trains as before."""
import json

import numpy as np
import pytest

import netspec
from netspec import cli
from netspec.checkpoint import read_checkpoint
from netspec.data import split as split_module
from netspec.errors import DataError, SpecError
from netspec.runner import load_spec_data, resume_trainer, trainer_for
from netspec.spec import load_spec


def tiny(validation=0.25, **train):
    """A dense net on 80 mnist-5k digits (60 train + 20 validation): a run takes milliseconds."""
    data = {"source": "mnist-5k", "limit_train": 80, "limit_test": 30}
    if validation is not None:
        data["validation"] = validation
    cfg = {"data": data, "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 3, "batch_size": 16}
    cfg.update(train)
    return {"name": "tiny", "seed": 5, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "dense", "units": 16}, {"type": "relu"}, {"type": "dropout", "ratio": 0.3},
                       {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy", "train": cfg}


def rows(x):
    return {r.tobytes() for r in x}


def test_the_split_comes_from_the_training_set_and_never_meets_the_test_set():
    spec = load_spec({**tiny(), "train": {**tiny()["train"], "data": {"source": "mnist-5k", "validation": 0.2}}})
    full = netspec.data.load_data({"source": "mnist-5k"})
    data = load_spec_data(spec, "float32")
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (3200, 800, 1000)
    idx = data.val_index
    assert idx.dtype == np.int64 and len(np.unique(idx)) == 800 and idx.min() >= 0 and idx.max() < 4000
    np.testing.assert_array_equal(data.x_val, full.x_train[idx])
    np.testing.assert_array_equal(data.t_val, full.t_train[idx])
    rest = np.setdiff1d(np.arange(4000), idx)
    np.testing.assert_array_equal(data.x_train, full.x_train[rest])  # the rest keeps its order
    assert rows(data.x_val).isdisjoint(rows(data.x_test))
    assert rows(data.x_val).isdisjoint(rows(data.x_train))
    # seeded: the same seed holds out the same samples, another seed others
    np.testing.assert_array_equal(load_spec_data(spec, "float32").val_index, idx)
    other = load_spec(spec.model_dump(mode="json") | {"seed": 6})
    assert not np.array_equal(load_spec_data(other, "float32").val_index, idx)


@pytest.mark.parametrize("validation, held", [(0.2, 16), (0.25, 20), (7, 7), (1, 1)])
def test_a_fraction_or_a_count(validation, held):
    data = load_spec_data(load_spec(tiny(validation)), "float32")
    assert (len(data.x_val), len(data.x_train)) == (held, 80 - held)


def test_per_epoch_reports_use_the_validation_set_and_the_test_set_is_read_once(tmp_path, monkeypatch):
    seen = []
    real = netspec.model.Model.evaluate

    def spy(self, x, t, *args, **kwargs):
        seen.append(len(x))
        return real(self, x, t, *args, **kwargs)

    monkeypatch.setattr(netspec.model.Model, "evaluate", spy)
    history = trainer_for(tiny(), out=tmp_path / "run", quiet=True).run()
    # each epoch: the training samples (60) and the validation samples (20); then the test set, once
    assert seen == [60, 20] * 3 + [30]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [list(m) for m in metrics] == [
        ["epoch", "step", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "seconds"]] * 3
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["test_acc"] == history.test_acc and result["test_samples"] == 30
    assert result["val_acc"] == metrics[-1]["val_acc"] and result["epochs"] == 3


def test_resume_holds_out_the_same_samples_whatever_a_new_draw_gives(tmp_path, monkeypatch):
    trainer_for(tiny(epochs=1), out=tmp_path / "cut", quiet=True).run()
    whole = trainer_for(tiny(epochs=3), out=tmp_path / "whole", quiet=True).run()
    _, arrays = read_checkpoint(tmp_path / "cut" / "model.npz")
    held = arrays["split/validation"].copy()
    # a later numpy drawing another split must not change a resumed run
    monkeypatch.setattr(split_module, "validation_indices", lambda n, *a, **k: np.arange(n - 20, n))
    resumed = resume_trainer(tmp_path / "cut", epochs=3, quiet=True)
    np.testing.assert_array_equal(resumed.val_index, held)
    again = resumed.run()
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in again] == \
        [{k: v for k, v in m.items() if k != "seconds"} for m in whole]
    _, arrays = read_checkpoint(tmp_path / "cut" / "model.npz")
    np.testing.assert_array_equal(arrays["split/validation"], held)


def test_without_a_split_nothing_changes(tmp_path):
    """No validation key: the same streams, metrics with test_acc/test_loss, and no split in the checkpoint."""
    a = trainer_for(tiny(None), out=tmp_path / "a", quiet=True).run()
    assert [list(m) for m in a] == [["epoch", "step", "train_loss", "train_acc", "test_acc", "test_loss", "lr",
                                     "seconds"]] * 3
    _, arrays = read_checkpoint(tmp_path / "a" / "model.npz")
    assert "split/validation" not in arrays
    # adding a split draws from its own stream: the initial weights are the same
    m0, m1 = netspec.compile(tiny(None)), netspec.compile(tiny(0.25))
    for k in m0.params:
        np.testing.assert_array_equal(m0.params[k], m1.params[k])


@pytest.mark.parametrize("value, message", [
    (0, "a count of validation samples must be >= 1 (got 0)"),
    (1.0, "a fraction of the training set must be between 0 and 1, exclusive (got 1.0)"),
    (-0.5, "a fraction of the training set must be between 0 and 1, exclusive (got -0.5)"),
    ("0.2", "expected a fraction such as 0.2 or a count of samples, got '0.2' (values are never read from "
            "strings: remove the quotes)"),
])
def test_bad_validation_values_are_spec_errors(write_spec, value, message):
    text = json.dumps(tiny(value)).replace(", ", ",\n")
    path = write_spec(text, "spec.json")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    (issue,) = err.value.issues
    assert issue["path"] == "train.data.validation" and issue["line"] is not None
    assert issue["message"].startswith(message)


def test_early_stopping_watches_the_validation_set(write_spec):
    spec = load_spec(tiny(early_stopping={"patience": 2}))
    assert spec.train.early_stopping.metric == "val_acc"
    path = write_spec(json.dumps(tiny(early_stopping={"metric": "test_acc"})), "spec.json")
    with pytest.raises(SpecError, match="train.early_stopping.metric: with a validation split the test set is "
                                        "evaluated only at the end; early stopping watches val_acc instead"):
        load_spec(path)
    with pytest.raises(SpecError, match="val_loss needs a validation split"):
        load_spec(tiny(None, early_stopping={"metric": "val_loss"}))


def test_inline_data_needs_its_own_test_set_for_a_split():
    spec = {"name": "i", "input": {"shape": [1]}, "layers": [{"type": "dense", "units": 2}],
            "loss": "softmax_cross_entropy",
            "train": {"epochs": 1, "data": {"source": "inline", "x": [[0], [1], [2]], "t": [0, 1, 0],
                                            "validation": 1}}}
    with pytest.raises(SpecError, match="needs x_test and t_test"):
        load_spec(spec)


def test_a_split_that_leaves_nothing_to_train_on_is_one_line(write_spec, capsys):
    path = write_spec(json.dumps(tiny(80)), "spec.json")
    rc = cli.main(["run", str(path), "--out", "r", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err == ("error: mnist-5k: validation 80 holds out 80 of the 80 training samples and leaves none to "
                   "train on; give a smaller fraction or count\n")
    with pytest.raises(DataError, match="holds out no sample"):
        load_spec_data(load_spec(tiny(0.001)), "float32")
