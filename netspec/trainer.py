"""The trainer: batches -> forward -> backward -> (gradient hook) -> optimizer update.

Design: all training state lives in one ``Trainer`` and is saved whole in the
checkpoint — parameters, optimizer state, the batch sampler's order and
position, both random generators (batches/augmentation and dropout) and the
history — so a run resumed from any checkpoint ends bit-identical to one that
was never interrupted. The loss is checked before every update: a NaN or
infinite loss stops training before it can touch the parameters or the last
good checkpoint.
"""
import contextlib
import math
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from .checkpoint import optimizer_state, save_checkpoint
from .data import augment
from .errors import CheckpointError, DataError, OutOfMemory, SpecError, TrainingDiverged
from .distributed import GradientReducer, average_buffers, share, world
from .interrupt import Interrupted, StopSignals
from .optim import make_optimizer, scheduled_lr
from .plots import save_plots
from .rundir import RunDir, os_errors
from .sampler import Sampler
from .seeds import seed_streams


class History(list):
    """Per-epoch metric dicts; ``model``, ``run_dir`` and ``test_acc`` are attached (``test_acc`` and
    ``test_loss`` stay None when the run did not read the test set: a tuning trial)."""
    model = None
    run_dir = None
    test_acc = None
    test_loss = None
    stopped = None


class Trainer:
    """Train a compiled model on a dataset as its spec's ``train`` section says."""

    def __init__(self, model, data, *, run_dir=None, epochs=None, quiet=False, progress=None,
                 callbacks=(), log=None, comm=None, signals=None):
        spec = model.spec
        # Under mpiexec with K > 1 processes: data-parallel over K ranks (netspec.distributed).
        self.comm = comm if comm is not None else world()
        if spec.train is None:
            raise SpecError(f"spec '{spec.name}' has no train section", file=spec.source)
        self.model, self.spec, self.cfg = model, spec, spec.train
        # a RunDir already claimed by the caller (netspec.runner), or a path claimed by run()
        self.files = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
        if self.comm.rank != 0:
            self.files, quiet, progress, log = None, True, False, (lambda msg: None)  # rank 0 writes and prints
        self.run_dir = self.files.path if self.files else None
        self.quiet = quiet
        self.callbacks = list(callbacks)
        self.log = log or (lambda msg: print(msg, flush=True))
        cfg = self.cfg
        self.x_train, self.t_train = _checked(model, data.x_train, data.t_train, f"data '{data.name}' (train)")
        # no test arrays: a tuning trial, which must never read the test set
        self.x_test, self.t_test = (None, None) if data.x_test is None else \
            _checked(model, data.x_test, data.t_test, f"data '{data.name}' (test)")
        # a validation split (train.data.validation): per-epoch reports use it, the test set is read at the end
        self.x_val, self.t_val = (None, None) if data.x_val is None else \
            _checked(model, data.x_val, data.t_val, f"data '{data.name}' (validation)")
        self.val_index = data.val_index
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
        self.optimizer = make_optimizer(cfg.optimizer, no_decay=model.no_decay_names())
        self.history = History()
        self.step = 0
        self.epoch = 0                     # completed epochs
        self.epoch_loss = [0.0, 0]         # running sum and count inside the current epoch
        self.epoch_seconds = 0.0
        self.best = None
        self.bad_epochs = 0
        self.progress = (sys.stderr.isatty() and not quiet) if progress is None else progress
        self._signals = None
        self._given_signals = signals  # a StopSignals the caller entered (a tuning worker's, for its life)
        self._stop_all = False
        self.reducer = GradientReducer(self.comm, model.params, model.compute_dtype) if self.comm.size > 1 else None

    # -- checkpoints ----------------------------------------------------------
    @property
    def checkpoint_path(self):
        return self.files.checkpoint_path if self.files else None

    def state(self):
        return {
            "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
            "epoch_loss": list(self.epoch_loss), "epoch_seconds": self.epoch_seconds,
            "sampler_pos": self.sampler.pos, "best": self.best, "bad_epochs": self.bad_epochs,
            "rng": self.rng.bit_generator.state, "dropout_rng": self.model.rng.bit_generator.state,
            "lr": self.optimizer.lr, "history": list(self.history),
        }

    def save(self):
        """Write the checkpoint atomically; a failed write leaves the previous one in place."""
        if not self.files:
            return None
        extra = {"sampler/perm": self.sampler.perm}
        if self.val_index is not None:
            extra["split/validation"] = self.val_index  # a resume holds out the same samples
        with os_errors(f"write the checkpoint {self.checkpoint_path} (the previous checkpoint, if any, "
                       "is intact)"):
            return save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.state(), extra)

    def _last_checkpoint(self):
        if self.files and os.path.exists(self.checkpoint_path):
            step = self.history[-1]["step"] if self.history else 0
            return f"the last good checkpoint, {self.checkpoint_path} (epoch {self.epoch}, step {step}), is intact"
        return "no checkpoint was written yet"

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
        """One step on the batch ``idx``: forward, backward, the divergence check, the update.

        Data-parallel (K > 1 ranks), this rank computes its contiguous share of the batch,
        weighted by share / batch, and one Allreduce sums the gradients, the loss and the
        stop flag (netspec.distributed). Augmentation and dropout then draw from streams of
        (seed, rank, K, step), so a run is reproducible for a fixed K, resumed or not; one
        process draws them from the training stream as always.
        """
        comm, shared = self.comm, self.reducer is not None
        mine, rng = idx, self.rng
        if shared:
            lo, hi = share(len(idx), comm.size, comm.rank)
            mine = idx[lo:hi]
            rng = np.random.default_rng([self.spec.seed, 1, comm.rank, comm.size, self.step])
            self.model.set_rng(np.random.default_rng([self.spec.seed, 2, comm.rank, comm.size, self.step]))
        x, t = self.x_train[mine], self.t_train[mine]
        aug = self.cfg.augment
        if aug is not None and aug.enabled and len(mine):
            x = augment(x, aug, rng)
        if self.cfg.label_smoothing:
            t = self._smoothed(t)
        try:
            grads, loss = None, 0.0
            if len(mine):
                with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, by step
                    loss, grads = self.model.gradient(x, t)
            if shared:
                stop = self._signals is not None and self._signals.pending
                grads, loss, self._stop_all = self.reducer.reduce(grads, len(mine) / len(idx), loss, stop)
            if not math.isfinite(loss):
                exc = self._diverged(loss)
                exc.collective = shared  # the same sum on every rank: all stop here together
                raise exc
            self.optimizer.update(self.model.params, grads)
        except MemoryError:
            where = f" on rank {comm.rank} (its share: {len(mine)})" if shared else ""
            raise OutOfMemory(f"out of memory at step {self.step + 1} (epoch {self.epoch + 1}, batch of "
                              f"{len(idx)}){where}; {self._last_checkpoint()}. Try a smaller batch_size or "
                              "eval_batch_size, or close other programs.") from None
        self.step += 1
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1
        return loss

    def _diverged(self, loss):
        return TrainingDiverged(f"training diverged: loss is {loss} at step {self.step + 1} "
                                f"(epoch {self.epoch + 1}); parameters were not updated; "
                                f"{self._last_checkpoint()}. Try a smaller learning rate "
                                f"(now {self.optimizer.lr:g}).")

    def _check_signals(self, signals):
        """Stop at this step boundary if a signal arrived (on any rank, when data-parallel)."""
        if self.reducer is None:
            signals.check()
        elif self._stop_all:
            exc = Interrupted(signals.received[0] if signals.received else signal.SIGTERM)
            exc.collective = True
            raise exc

    def _evaluate(self, x, t):
        """(mean loss, accuracy) of x, t; data-parallel: each rank evaluates its share, counts are summed."""
        bs, comm = self.cfg.eval_batch_size, self.comm
        if comm.size == 1:
            return self.model.evaluate(x, t, bs)[:2]
        lo, hi = share(len(x), comm.size, comm.rank)
        n = hi - lo
        loss, acc, _ = self.model.evaluate(x[lo:hi], t[lo:hi], bs) if n else (0.0, 0.0, None)
        sums = comm.allreduce(np.array([loss * n, (acc or 0.0) * n, n], dtype=np.float64))
        total = max(sums[2], 1.0)
        return float(sums[0] / total), (float(sums[1] / total) if acc is not None else None)

    def _smoothed(self, t):
        """Label smoothing: targets (1 - e) * one_hot + e / K for the training loss only."""
        e, K = self.cfg.label_smoothing, self.model.output_shape[0]
        onehot = np.eye(K, dtype=self.model.compute_dtype)[t] if t.ndim == 1 else t
        return (1 - e) * onehot + e / K

    def evaluate_epoch(self):
        m, cfg = self.model, self.cfg
        k = cfg.eval_samples
        average_buffers(self.comm, m)
        with np.errstate(over="ignore", invalid="ignore"):
            tr = self._evaluate(self.x_train[:k], self.t_train[:k])
            if self.x_val is not None:  # the whole validation set: it is what a search compares
                va = self._evaluate(self.x_val, self.t_val)
                return {"train_acc": tr[1], "val_acc": va[1], "val_loss": va[0]}
            te = self._evaluate(self.x_test[:k], self.t_test[:k])
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
        """Train to the end of the budget; returns the History.

        SIGINT and SIGTERM stop the run at the next step boundary: the checkpoint is saved
        (signals arriving meanwhile are ignored) and ``Interrupted`` is raised.
        """
        if self.files and not self.files.claimed:
            self.files.claim(resume=self.step > 0)
        try:
            return self._run()
        finally:
            if self.files:
                self.files.release()

    def _run(self):
        if self.files:
            self.files.start(self.spec, self.history)
        bar = self._progress_bar()
        stopped = None
        self._stop_request = None
        try:
            given = self._given_signals
            with contextlib.nullcontext(given) if given is not None else StopSignals() as signals:
                self._signals = signals
                try:
                    while self.step < self.total_steps and not stopped:
                        self._train_epoch(bar, signals)
                        stopped = self._after_epoch(bar)
                except KeyboardInterrupt as exc:
                    if bar is not None:
                        bar.close()
                        bar = None
                    self._save_on_interrupt(exc)
                    raise
        finally:
            if bar is not None:
                bar.close()
        self.history.stopped = stopped
        return self.finish()

    def _train_epoch(self, bar, signals):
        """Steps up to the end of the current epoch (or the budget), checking for signals after each."""
        cfg = self.cfg
        per_step = cfg.schedule is not None and cfg.schedule.per == "step"
        if self.epoch_loss[1] == 0 and not per_step:
            self.optimizer.lr = scheduled_lr(cfg.optimizer.lr, cfg.schedule, self.epoch, self.epochs)
        t0 = time.perf_counter()
        end = min((self.epoch + 1) * self.steps_per_epoch, self.total_steps)
        try:
            while self.step < end:
                if per_step:
                    self.optimizer.lr = scheduled_lr(cfg.optimizer.lr, cfg.schedule, self.step,
                                                     self.epochs * self.steps_per_epoch, self.steps_per_epoch)
                loss = self.train_step(self.sampler.next())
                self._check_signals(signals)  # between two updates: the state is consistent here
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4g}", refresh=False)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._print(bar, f"step {self.step}: loss {loss:.6g}")
        finally:
            self.epoch_seconds += time.perf_counter() - t0

    def _after_epoch(self, bar):
        """Evaluate, run callbacks and early stopping, checkpoint; returns why to stop, or None."""
        cfg = self.cfg
        metrics = self._end_epoch()
        self._print(bar, self._epoch_line(metrics))
        for cb in self.callbacks:
            cb(self, metrics)
        stopped = self._stop_request
        if cfg.early_stopping:
            if self._improved(metrics):
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= cfg.early_stopping.patience:
                    stopped = (f"early stopping: {cfg.early_stopping.metric} did not improve "
                               f"for {self.bad_epochs} epochs")
        if self.comm.size > 1:  # callbacks may decide per rank (CPU budgets): the ranks must agree
            reasons = self.comm.allgather((stopped, self.total_steps))
            stopped = next((r for r, _ in reasons if r), None)
            self.total_steps = min(t for _, t in reasons)
        last = self.step >= self.total_steps or stopped
        if self.files:
            if self.epoch % cfg.checkpoint_every == 0 or last:
                self.save()
            self.files.append_metrics(metrics)  # after the save: a resume rewrites it from the checkpoint
        if stopped:
            self._print(bar, stopped)
        return stopped

    def _save_on_interrupt(self, exc):
        average_buffers(self.comm, self.model)  # every rank is here: a collective stop
        if not self.files:
            return
        why = getattr(exc, "args", None) and exc.args[0] or "interrupted"
        self.save()
        self.log(f"{why}: stopped at step {self.step}; saved {self.checkpoint_path}; "
                 f"continue with: netspec run --resume {self.run_dir}")

    def _progress_bar(self):
        if not self.progress:
            return None
        return tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                    file=sys.stderr, leave=False)

    def stop(self, reason="stopped by a callback"):
        """Ask the run to end after the current epoch (checkpointed as usual); for callbacks."""
        self._stop_request = reason

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
        """Evaluate on the whole test set (unless the run has none: a tuning trial); write
        result.json and, when matplotlib is there, plots."""
        average_buffers(self.comm, self.model)
        h = self.history
        h.model, h.run_dir = self.model, self.run_dir
        if self.x_test is not None:
            h.test_loss, h.test_acc = self._evaluate(self.x_test, self.t_test)
        if not self.quiet:
            self.log(self.result_line())
        if self.run_dir:
            self.files.write_result(self.result())
            save_plots(self)
        return h

    def result(self):
        """The run's final numbers, for result.json (and netspec compare)."""
        h = self.history
        out = {"epochs": self.epoch, "steps": self.step, "seconds": round(sum(m["seconds"] for m in h), 4),
               "params": int(sum(p.size for p in self.model.params.values())), "stopped": h.stopped}
        if h:
            out.update({k: h[-1][k] for k in ("train_loss", "val_acc", "val_loss") if k in h[-1]})
        if self.x_test is not None:
            out.update({"test_acc": h.test_acc, "test_loss": h.test_loss, "test_samples": len(self.x_test)})
        return out

    def result_line(self):
        h = self.history
        if self.x_test is None:  # a tuning trial: the test set is never read
            last = h[-1] if h else {}
            n = len(self.x_val) if self.x_val is not None else 0
            if last.get("val_acc") is not None:
                return f"validation accuracy: {last['val_acc']:.4f} ({round(last['val_acc'] * n)}/{n}), " \
                       f"validation loss {last['val_loss']:.4f} (test set not read)"
            return f"validation loss: {last.get('val_loss', float('nan')):.6g} ({n} samples; test set not read)"
        n = len(self.t_test)
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
        split = "val" if "val_loss" in m else "test"
        if m.get("train_acc") is not None:
            parts += [f"train acc {m['train_acc']:.4f}", f"{split} acc {m[split + '_acc']:.4f}"]
        else:
            parts.append(f"{split} loss {m[split + '_loss']:.6g}")
        parts += [f"lr {m['lr']:.3g}", f"{m['seconds']:.1f}s"]
        return "  ".join(parts)


def _checked(model, x, t, where):
    """Samples reshaped to the model input and targets checked against its output, once, up front."""
    x = model.as_input(x, where)
    t = model.prepare_targets(t, where)
    if len(x) != len(t):
        raise DataError(f"{where}: {len(x)} samples but {len(t)} targets")
    return x, t
