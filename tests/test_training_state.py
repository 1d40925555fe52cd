"""Training state that must survive a resume, early stopping's rule, and the batch samplers.

A run interrupted mid-epoch and resumed must log exactly what the uninterrupted run
logs, including the epoch's running loss and the early-stopping counters; early
stopping improves a loss by decreasing it and an accuracy by increasing it, each by
more than ``min_delta``; ``sampling: replacement`` draws independent indices while
``shuffle`` visits every sample once per epoch.
"""
import json
import signal

import numpy as np
import pytest

import netspec
from netspec.checkpoint import read_checkpoint
from netspec.runner import resume_trainer, trainer_for
from netspec.sampler import Sampler

N_TRAIN, BATCH = 60, 16  # 4 steps per epoch: three batches of 16 and one of 12


def tiny(**train):
    """A dense net with dropout on 60 mnist-5k digits: a run takes a few milliseconds."""
    cfg = {"data": {"source": "mnist-5k", "limit_train": N_TRAIN, "limit_test": 40},
           "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 3, "batch_size": BATCH}
    cfg.update(train)
    return {"name": "tiny", "seed": 5, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "dense", "units": 16}, {"type": "relu"}, {"type": "dropout", "ratio": 0.3},
                       {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy", "train": cfg}


def metrics_of(run_dir):
    """metrics.jsonl without the wall-clock ``seconds``: what must not depend on an interruption."""
    with open(run_dir / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def interrupt_at(spec, out, step):
    """Start a run in ``out`` and deliver SIGINT right after ``step``; returns the checkpoint's state."""
    tr = trainer_for(spec, out=out, quiet=True)
    real_step = tr.train_step

    def step_then_signal(idx):
        loss = real_step(idx)
        if tr.step == step:
            signal.raise_signal(signal.SIGINT)
        return loss

    tr.train_step = step_then_signal
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    meta, _ = read_checkpoint(out / "model.npz")
    return meta["trainer"]


def test_resume_mid_epoch_logs_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    """Stopped after step 6 (2 of epoch 2's 4 steps), the resumed run's epoch-2 train_loss must
    still average all 4 steps: every logged value equals the uninterrupted run's."""
    spec = tiny(schedule={"type": "step", "step_size": 1, "gamma": 0.5})
    full = netspec.train(spec, out=tmp_path / "full")
    state = interrupt_at(spec, tmp_path / "cut", step=6)
    assert state["step"] == 6 and state["epoch"] == 1 and state["epoch_loss"][1] == 2
    assert len(metrics_of(tmp_path / "cut")) == 1
    resumed = resume_trainer(str(tmp_path / "cut"), quiet=True).run()
    assert [m["step"] for m in resumed] == [4, 8, 12]
    assert metrics_of(tmp_path / "cut") == metrics_of(tmp_path / "full")
    assert resumed.test_acc == full.test_acc and resumed.test_loss == full.test_loss


def test_resume_keeps_the_early_stopping_state(tmp_path):
    """min_delta 1.0 on test_acc: only epoch 1 (no best yet) counts as an improvement, so with
    patience 2 the run stops after epoch 3. Resumed mid-epoch 3, it must stop there too, not
    start counting afresh (which would stop after epoch 5)."""
    spec = tiny(epochs=8, early_stopping={"metric": "test_acc", "patience": 2, "min_delta": 1.0})
    full = netspec.train(spec, out=tmp_path / "full")
    reason = "early stopping: test_acc did not improve for 2 epochs"
    assert len(full) == 3 and full.stopped == reason
    state = interrupt_at(spec, tmp_path / "cut", step=10)
    assert state["epoch"] == 2 and state["bad_epochs"] == 1 and state["best"] == full[0]["test_acc"]
    resumed = resume_trainer(str(tmp_path / "cut"), quiet=True).run()
    assert len(resumed) == 3 and resumed.stopped == reason
    assert metrics_of(tmp_path / "cut") == metrics_of(tmp_path / "full")


# -- early stopping's rule, on scripted metric values -----------------------------------------
# A callback runs before early stopping and sees the epoch's metrics; it replaces the watched
# metric by the values below (exact in binary, so "by more than min_delta" is exact too).
#
# loss, min_delta 0.25, patience 2: epoch 1 sets best 2.0; 1.75 is only 0.25 lower (bad 1);
# 1.5 is 0.5 lower (best 1.5); 1.375 (bad 1); 1.25, again only 0.25 lower (bad 2): stop after 5.
# Improvement as an increase stops after 3; min_delta ignored or compared with >= never stops.
LOSSES = [2.0, 1.75, 1.5, 1.375, 1.25, 1.125, 1.0, 0.875]
# accuracy, min_delta 0.125: best 0.25; 0.375 (+0.125, bad 1); 0.5 (best); 0.5625 (bad 1);
# 0.625 (+0.125, bad 2): stop after 5. As a decrease it stops after 3; without min_delta, never.
ACCURACIES = [0.25, 0.375, 0.5, 0.5625, 0.625, 0.75, 0.875, 1.0]


@pytest.mark.parametrize("metric,values,min_delta", [
    ("test_loss", LOSSES, 0.25), ("train_loss", LOSSES, 0.25),
    ("test_acc", ACCURACIES, 0.125), ("train_acc", ACCURACIES, 0.125)])
def test_early_stopping_direction_and_min_delta(metric, values, min_delta):
    """A loss improves by decreasing, an accuracy by increasing, each by more than min_delta
    over the best so far: both scripted sequences stop after epoch 5 of 8."""
    def scripted(trainer, metrics):
        metrics[metric] = values[metrics["epoch"] - 1]

    spec = tiny(epochs=len(values), steps_per_epoch=1,
                early_stopping={"metric": metric, "patience": 2, "min_delta": min_delta})
    h = netspec.train(spec, callbacks=[scripted])
    assert [m[metric] for m in h] == values[:5]
    assert h.stopped == f"early stopping: {metric} did not improve for 2 epochs"


@pytest.mark.parametrize("metric,values", [("test_loss", [1.0, 0.5, 0.25, 0.125]),
                                           ("test_acc", [0.25, 0.5, 0.75, 1.0])])
def test_early_stopping_never_fires_while_the_metric_improves(metric, values):
    """Patience 1 and a metric improving every epoch (by more than min_delta 0.0625): all 4 epochs run."""
    def scripted(trainer, metrics):
        metrics[metric] = values[metrics["epoch"] - 1]

    spec = tiny(epochs=len(values), steps_per_epoch=1,
                early_stopping={"metric": metric, "patience": 1, "min_delta": 0.0625})
    h = netspec.train(spec, callbacks=[scripted])
    assert len(h) == 4 and h.stopped is None


# -- the samplers -------------------------------------------------------------------------------

def record_batches(spec, epochs):
    """The index batches a run trains on, one list per epoch."""
    tr = trainer_for(spec, save=False, quiet=True)
    batches = []
    real_step = tr.train_step

    def recording(idx):
        batches.append(np.array(idx, copy=True))
        return real_step(idx)

    tr.train_step = recording
    tr.run()
    assert len(batches) == epochs * tr.steps_per_epoch
    return [batches[e * tr.steps_per_epoch:(e + 1) * tr.steps_per_epoch] for e in range(epochs)]


def test_trainer_with_replacement_draws_full_batches_that_repeat_and_miss_samples():
    """sampling: replacement trains on 4 full batches of 16 independent draws per epoch (64 of 60
    samples): some samples come twice and, for this seed as almost surely, some not at all."""
    for epoch in record_batches(tiny(sampling="replacement"), epochs=3):
        assert [len(b) for b in epoch] == [BATCH] * 4
        drawn = np.concatenate(epoch)
        assert drawn.min() >= 0 and drawn.max() < N_TRAIN
        counts = np.bincount(drawn, minlength=N_TRAIN)
        assert counts.max() >= 2 and (counts == 0).sum() > 0


def test_trainer_with_shuffle_visits_every_sample_once_per_epoch():
    """sampling: shuffle (the default): batches of 16, 16, 16 and 12 cover each of the 60 samples
    exactly once per epoch, in a fresh order each epoch."""
    epochs = record_batches(tiny(), epochs=3)
    orders = []
    for epoch in epochs:
        assert [len(b) for b in epoch] == [16, 16, 16, 12]
        drawn = np.concatenate(epoch)
        assert np.array_equal(np.sort(drawn), np.arange(N_TRAIN))
        orders.append(drawn)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_sampler_replacement_counts():
    """Sampler(mode='replacement'): each batch has batch_size independent draws from range(n), so
    a batch may hold an index twice (62% of batches of 10 from 50: 80 of 200 is 6 sd below);
    one epoch's worth (50 draws of 50) repeats some and misses some; 2,000 draws reach every index."""
    n, b = 50, 10
    s = Sampler(n, b, "replacement", np.random.default_rng(11))
    batches = [s.next() for _ in range(200)]
    assert all(len(x) == b for x in batches)
    assert sum(len(np.unique(x)) < b for x in batches) > 80
    counts = [np.bincount(np.concatenate(batches[e * 5:(e + 1) * 5]), minlength=n) for e in range(40)]
    for c in counts:
        assert len(c) == n and c.sum() == n
        assert (c == 0).sum() > 0 and c.max() >= 2
    total = np.sum(counts, axis=0)
    assert total.min() > 0 and total.sum() == 2000


def test_sampler_shuffle_counts():
    """Sampler(mode='shuffle'): passes of 45 as batches of 10, 10, 10, 10, 5; each pass holds every
    index exactly once, and the next pass is a new permutation."""
    n, b = 45, 10
    s = Sampler(n, b, "shuffle", np.random.default_rng(11))
    passes = []
    for _ in range(3):
        batches = [s.next() for _ in range(5)]
        assert [len(x) for x in batches] == [10, 10, 10, 10, 5]
        drawn = np.concatenate(batches)
        assert np.array_equal(np.bincount(drawn, minlength=n), np.ones(n, dtype=np.int64))
        passes.append(drawn)
    assert not np.array_equal(passes[0], passes[1]) and not np.array_equal(passes[1], passes[2])


def test_a_schedule_per_step_resumes_mid_epoch_where_it_was(tmp_path):
    """The learning rate of a per-step schedule follows the step counter: resumed after step 6,
    the run logs what the uninterrupted one logs, lr included."""
    spec = tiny(schedule={"type": "cosine", "warmup_epochs": 1, "per": "step"})
    full = netspec.train(spec, out=tmp_path / "full")
    interrupt_at(spec, tmp_path / "cut", step=6)
    resumed = resume_trainer(str(tmp_path / "cut"), quiet=True).run()
    assert metrics_of(tmp_path / "cut") == metrics_of(tmp_path / "full")
    assert resumed.test_acc == full.test_acc
    lrs = [m["lr"] for m in metrics_of(tmp_path / "full")]
    assert len(set(lrs)) == len(lrs) == 3
