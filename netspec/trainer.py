"""The trainer: batches -> forward -> backward -> (gradient hook) -> optimizer update.

Design: all training state lives in one ``Trainer`` and is saved whole in the
checkpoint — parameters, optimizer state, the batch sampler's order and
position, both random generators (batches/augmentation and dropout) and the
history — so a run resumed from any checkpoint ends bit-identical to one that
was never interrupted. The loss is checked before every update: a NaN or
infinite loss stops training before it can touch the parameters or the last
good checkpoint.
"""
import json
import math
import os
import sys
import time

import numpy as np

from .checkpoint import optimizer_state, read_checkpoint, model_from_checkpoint, save_checkpoint
from .compile import compile, seed_streams
from .errors import CheckpointError, DataError, SpecError, TrainingDiverged
from .optim import make_optimizer, scheduled_lr
from .spec import load_spec, spec_to_dict


class History(list):
    """Per-epoch metric dicts; ``model``, ``run_dir`` and ``test_acc`` are attached."""
    model = None
    run_dir = None
    test_acc = None
    test_loss = None
    stopped = None


def _fit_data(x, shape, where):
    """Reshape samples to the model input, or explain why they cannot fit."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return x.reshape((len(x),) + tuple(shape))
    raise DataError(f"{where}: samples are shaped {list(x.shape[1:])}, but the spec's input is "
                    f"{list(shape)} ({int(np.prod(x.shape[1:]))} vs {int(np.prod(shape))} values per sample)")


def check_targets(model, t, where):
    out = model.output_shape
    if model.loss_fn.classification:
        if t.ndim == 1:
            if not np.issubdtype(t.dtype, np.integer):
                raise DataError(f"{where}: class labels must be integers, found {t.dtype}")
            if t.size and (t.min() < 0 or t.max() >= out[0]):
                raise DataError(f"{where}: labels range over {t.min()}..{t.max()}, but the model "
                                f"outputs {out[0]} classes")
            return
        if t.shape[1:] != out:
            raise DataError(f"{where}: one-hot targets are {list(t.shape[1:])} wide, the model outputs {list(out)}")
        return
    if t.shape[1:] != out:
        if int(np.prod(t.shape[1:])) == int(np.prod(out)):
            return
        raise DataError(f"{where}: targets are shaped {list(t.shape[1:])} per sample, "
                        f"but the model outputs {list(out)} (loss {model.spec.loss})")


class Sampler:
    """Mini-batch indices: shuffled passes, or draws with replacement (the book's way)."""

    def __init__(self, n, batch_size, mode, rng):
        self.n, self.batch_size, self.mode, self.rng = n, batch_size, mode, rng
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def next(self):
        b = self.batch_size
        if self.mode == "replacement":
            return self.rng.choice(self.n, size=b)
        if self.pos >= len(self.perm):
            self.perm, self.pos = self.rng.permutation(self.n), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += len(idx)
        return idx


class Trainer:
    """Train a compiled model on a dataset as its spec's ``train`` section says."""

    def __init__(self, model, data, *, run_dir=None, epochs=None, quiet=False, progress=None,
                 callbacks=(), log=None, gradient_hook=None):
        spec = model.spec
        if spec.train is None:
            raise SpecError(f"spec '{spec.name}' has no train section", file=spec.source)
        self.model, self.spec, self.cfg = model, spec, spec.train
        self.run_dir = run_dir
        self.quiet = quiet
        self.callbacks = list(callbacks)
        self.gradient_hook = gradient_hook  # seam for data-parallel all-reduce
        self.log = log or (lambda msg: print(msg, flush=True))
        cfg = self.cfg
        src = f"data '{data.name}'"
        self.x_train = _fit_data(data.x_train, model.input_shape, src + " (train)")
        self.x_test = _fit_data(data.x_test, model.input_shape, src + " (test)")
        check_targets(model, data.t_train, src + " (train)")
        check_targets(model, data.t_test, src + " (test)")
        self.t_train, self.t_test = data.t_train, data.t_test
        if cfg.augment is not None and cfg.augment.enabled and len(model.input_shape) != 3:
            raise DataError(f"augmentation needs image input (C, H, W); the spec's input is {list(model.input_shape)}")
        n = len(self.x_train)
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(n / cfg.batch_size))
        if epochs is not None:
            self.total_steps = epochs * self.steps_per_epoch
        elif cfg.steps is not None:
            self.total_steps = cfg.steps
        else:
            self.total_steps = cfg.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        _, train_ss, _ = seed_streams(spec.seed)
        self.rng = np.random.default_rng(train_ss)
        self.sampler = Sampler(n, cfg.batch_size, cfg.sampling, self.rng)
        self.optimizer = make_optimizer(cfg.optimizer)
        self.history = History()
        self.step = 0
        self.epoch = 0                     # completed epochs
        self.epoch_loss = [0.0, 0]         # running sum and count inside the current epoch
        self.epoch_seconds = 0.0
        self.best = None
        self.bad_epochs = 0
        self.progress = (sys.stderr.isatty() and not quiet) if progress is None else progress

    # -- checkpoints ----------------------------------------------------------
    @property
    def checkpoint_path(self):
        return os.path.join(self.run_dir, "model.npz") if self.run_dir else None

    def state(self):
        return {
            "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
            "epoch_loss": list(self.epoch_loss), "epoch_seconds": self.epoch_seconds,
            "sampler_pos": self.sampler.pos, "best": self.best, "bad_epochs": self.bad_epochs,
            "rng": self.rng.bit_generator.state, "dropout_rng": self.model.rng.bit_generator.state,
            "lr": self.optimizer.lr, "history": list(self.history),
        }

    def save(self):
        if not self.run_dir:
            return None
        return save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.state(),
                               {"sampler/perm": self.sampler.perm})

    def restore(self, meta, arrays):
        st = meta.get("trainer")
        if not st:
            raise CheckpointError("the checkpoint holds a model but no training state; it cannot be resumed")
        self.step, self.epoch = st["step"], st["epoch"]
        self.epoch_loss, self.epoch_seconds = list(st["epoch_loss"]), st["epoch_seconds"]
        self.best, self.bad_epochs = st["best"], st["bad_epochs"]
        self.rng.bit_generator.state = st["rng"]
        self.model.rng.bit_generator.state = st["dropout_rng"]
        self.sampler.perm = np.array(arrays.get("sampler/perm", np.zeros(0, np.int64)), dtype=np.int64)
        self.sampler.pos = st["sampler_pos"]
        self.optimizer.load_state_dict(optimizer_state(arrays))
        self.optimizer.lr = st["lr"]
        self.history[:] = st["history"]

    # -- the loop -------------------------------------------------------------------
    def train_step(self, idx):
        x = self.x_train[idx]
        aug = self.cfg.augment
        if aug is not None and aug.enabled:
            from .data import augment
            x = augment(x, aug, self.rng)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, by step
            grads = self.model.gradient(x, self.t_train[idx])
        loss = self.model.last_loss
        if not math.isfinite(loss):
            where = (f"the last good checkpoint, {self.checkpoint_path} (epoch {self.epoch}, step "
                     f"{self.history[-1]['step'] if self.history else 0}), is intact"
                     if self.run_dir and os.path.exists(self.checkpoint_path) else "no checkpoint was written yet")
            raise TrainingDiverged(f"training diverged: loss is {loss} at step {self.step + 1} "
                                   f"(epoch {self.epoch + 1}); parameters were not updated; {where}. "
                                   f"Try a smaller learning rate (now {self.optimizer.lr:g}).")
        if self.gradient_hook is not None:
            grads = self.gradient_hook(grads)
        self.optimizer.update(self.model.params, grads)
        self.step += 1
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1
        return loss

    def evaluate_epoch(self):
        m, cfg = self.model, self.cfg
        k = cfg.eval_samples
        with np.errstate(over="ignore", invalid="ignore"):
            tr = m.evaluate(self.x_train[:k], self.t_train[:k], cfg.eval_batch_size)
            te = m.evaluate(self.x_test[:k], self.t_test[:k], cfg.eval_batch_size)
        return {"train_acc": tr[1], "test_acc": te[1], "test_loss": te[0]}

    def _improved(self, metrics):
        es = self.cfg.early_stopping
        value = metrics.get(es.metric)
        if value is None:
            return True
        sign = 1 if es.metric.endswith("acc") else -1
        if self.best is None or sign * (value - self.best) > es.min_delta:
            self.best = value
            return True
        return False

    def run(self):
        """Train to the end of the budget; returns the History."""
        cfg = self.cfg
        if self.run_dir:
            self._write_run_files()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       file=sys.stderr, leave=False)
        stopped = None
        self._interrupted = False
        self._stop_request = None
        restore_sigint = self._defer_sigint()
        try:
            while self.step < self.total_steps:
                if self.epoch_loss[1] == 0:
                    self.optimizer.lr = scheduled_lr(cfg.optimizer.lr, cfg.schedule, self.epoch, self.epochs)
                t0 = time.perf_counter()
                end = min((self.epoch + 1) * self.steps_per_epoch, self.total_steps)
                try:
                    while self.step < end:
                        loss = self.train_step(self.sampler.next())
                        if self._interrupted:  # Ctrl-C lands between steps, never inside an update
                            raise KeyboardInterrupt
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4g}", refresh=False)
                        if cfg.log_every and self.step % cfg.log_every == 0:
                            self._print(bar, f"step {self.step}: loss {loss:.6g}")
                finally:
                    self.epoch_seconds += time.perf_counter() - t0
                metrics = self._end_epoch()
                self._print(bar, self._epoch_line(metrics))
                for cb in self.callbacks:
                    cb(self, metrics)
                if self._stop_request:
                    stopped = self._stop_request
                if cfg.early_stopping and not self._improved(metrics):
                    self.bad_epochs += 1
                    if self.bad_epochs >= cfg.early_stopping.patience:
                        stopped = f"early stopping: {cfg.early_stopping.metric} did not improve for {self.bad_epochs} epochs"
                elif cfg.early_stopping:
                    self.bad_epochs = 0
                last = self.step >= self.total_steps or stopped
                if self.run_dir:
                    if self.epoch % cfg.checkpoint_every == 0 or last:
                        self.save()
                    self._append_metrics(metrics)  # after the save: a resume rewrites it from the checkpoint
                if stopped:
                    self._print(bar, stopped)
                    break
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
                bar = None
            if self.run_dir:
                self.save()
                self.log(f"interrupted at step {self.step}; saved {self.checkpoint_path}; "
                         f"continue with: netspec run --resume {self.run_dir}")
            raise
        finally:
            restore_sigint()
            if bar is not None:
                bar.close()
        self.history.stopped = stopped
        return self.finish()

    def stop(self, reason="stopped by a callback"):
        """Ask the run to end after the current epoch (checkpointed as usual); for callbacks."""
        self._stop_request = reason

    def _defer_sigint(self):
        """Turn SIGINT into a flag checked between steps; returns the undo function."""
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = signal.getsignal(signal.SIGINT)
        if old is not signal.default_int_handler:
            return lambda: None  # someone else handles SIGINT; leave it alone

        def handler(signum, frame):
            if self._interrupted:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._interrupted = True

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, old)

    def _end_epoch(self):
        s, c = self.epoch_loss
        metrics = {"epoch": self.epoch + 1, "step": self.step, "train_loss": s / max(c, 1)}
        metrics.update(self.evaluate_epoch())
        metrics["lr"] = self.optimizer.lr
        metrics["seconds"] = round(self.epoch_seconds, 4)
        self.history.append(metrics)
        self.epoch += 1
        self.epoch_loss = [0.0, 0]
        self.epoch_seconds = 0.0
        return metrics

    def finish(self):
        """Evaluate on the whole test set; write plots when matplotlib is there."""
        loss, acc = self.model.evaluate(self.x_test, self.t_test, self.cfg.eval_batch_size)
        h = self.history
        h.model, h.run_dir, h.test_acc, h.test_loss = self.model, self.run_dir, acc, loss
        if not self.quiet:
            self.log(self.result_line())
        if self.run_dir:
            from .plots import save_plots
            save_plots(self)
        return h

    def result_line(self):
        h, n = self.history, len(self.t_test)
        if h.test_acc is not None:
            return f"test accuracy: {h.test_acc:.4f} ({round(h.test_acc * n)}/{n}), test loss {h.test_loss:.4f}"
        return f"test loss: {h.test_loss:.6g} ({n} samples)"

    # -- output ----------------------------------------------------------------------
    def _print(self, bar, msg):
        if self.quiet:
            return
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            self.log(msg)

    def _epoch_line(self, m):
        parts = [f"epoch {m['epoch']}/{self.epochs}", f"step {m['step']}", f"loss {m['train_loss']:.4g}"]
        if m.get("train_acc") is not None:
            parts += [f"train acc {m['train_acc']:.4f}", f"test acc {m['test_acc']:.4f}"]
        else:
            parts.append(f"test loss {m['test_loss']:.6g}")
        parts += [f"lr {m['lr']:.3g}", f"{m['seconds']:.1f}s"]
        return "  ".join(parts)

    def _write_run_files(self):
        os.makedirs(self.run_dir, exist_ok=True)
        _atomic_text(os.path.join(self.run_dir, "spec.resolved.json"),
                     json.dumps(spec_to_dict(self.spec), indent=2) + "\n")
        # metrics.jsonl mirrors the checkpointed history (epochs after it are redone on resume)
        _atomic_text(os.path.join(self.run_dir, "metrics.jsonl"),
                     "".join(json.dumps(m) + "\n" for m in self.history))

    def _append_metrics(self, metrics):
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")


def _atomic_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def default_run_dir(spec):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{spec.name}-{stamp}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def load_spec_data(spec, dtype):
    from .data import load_data
    base_dir = os.path.dirname(os.path.abspath(spec.source)) if spec.source and os.path.exists(spec.source) else None
    return load_data(spec.train.data, seed=spec.seed, dtype=dtype, base_dir=base_dir)


def trainer_for(spec, *, out=None, epochs=None, dtype=None, quiet=False, progress=None, callbacks=(),
                save=True, data=None):
    spec = load_spec(spec)
    if spec.train is None:
        raise SpecError(f"{spec.source}: the spec has no 'train' section; add one to train it", file=spec.source)
    model = compile(spec, dtype=dtype)
    data = data if data is not None else load_spec_data(spec, model.dtype)
    run_dir = (out or default_run_dir(spec)) if save else None
    return Trainer(model, data, run_dir=run_dir, epochs=epochs, quiet=quiet, progress=progress,
                   callbacks=callbacks)


def resume_trainer(run_dir, *, epochs=None, quiet=False, progress=None, callbacks=()):
    """A Trainer restored from ``run_dir/model.npz``, ready to continue."""
    path = os.path.join(run_dir, "model.npz")
    meta, arrays = read_checkpoint(path)
    model = model_from_checkpoint(meta, arrays, path)
    data = load_spec_data(model.spec, model.dtype)
    st = meta.get("trainer") or {}
    tr = Trainer(model, data, run_dir=run_dir, epochs=epochs, quiet=quiet, progress=progress,
                 callbacks=callbacks)
    if epochs is None and "total_steps" in st:
        tr.total_steps = st["total_steps"]
        tr.epochs = math.ceil(tr.total_steps / tr.steps_per_epoch)
    tr.restore(meta, arrays)
    return tr


def train(spec, *, out=None, epochs=None, dtype=None, quiet=True, progress=False, callbacks=(), save=False):
    """Train a spec (path, dict or NetSpec) and return its History (``.model`` holds the model).

    Nothing is written unless ``save=True`` or ``out`` is given.
    """
    tr = trainer_for(spec, out=out, epochs=epochs, dtype=dtype, quiet=quiet, progress=progress,
                     callbacks=callbacks, save=save or out is not None)
    return tr.run()
