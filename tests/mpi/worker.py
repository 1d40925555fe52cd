"""Run under mpiexec by tests/test_mpi.py (also runnable alone, as one process).

    python worker.py train SPEC OUT.npz [--steps N] [--dtype D] [--stop-on-rank R]
        train without a run directory; rank 0 writes the parameters and the history to OUT.npz;
        with --stop-on-rank, a callback on rank R alone asks to stop after the first epoch
    python worker.py info DIR
        `netspec info --json` of each rank, written to DIR/info.<rank>.json (no interleaved output)
    python worker.py cli FAULT STEP RANK -- NETSPEC ARGS...
        run the command line, after arranging for RANK to fail at STEP:
        FAULT is 'raise' (an exception) or 'kill' (SIGKILL, as the OOM killer would)
"""
import json
import os
import signal
import sys

import numpy as np

from netspec.distributed import world


def train(spec, out, steps, dtype, stop_rank=None):
    from netspec.runner import trainer_for

    def stop_here(trainer, metrics):
        if trainer.comm.rank == stop_rank:
            trainer.stop(f"asked by rank {stop_rank}")

    tr = trainer_for(spec, epochs=None, dtype=dtype, quiet=True, progress=False, save=False,
                     callbacks=[stop_here])
    if steps:
        tr.total_steps = steps
    h = tr.run()
    if world().rank == 0:
        np.savez(out, history=json.dumps(list(h)), test_acc=h.test_acc,
                 **{f"param/{k}": v for k, v in h.model.params.items()},
                 **{f"buffer/{k}": v for k, v in h.model.buffers.items()})


def cli(fault, step, rank, argv):
    from netspec import trainer
    from netspec.cli import main
    original = trainer.Trainer.train_step

    def failing(self, idx):
        if self.comm.rank == rank and self.step == step:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at step {step}")
        return original(self, idx)

    trainer.Trainer.train_step = failing
    return main(argv)


def info(out_dir):
    import contextlib
    import io
    from netspec.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["info", "--json"])
    with open(os.path.join(out_dir, f"info.{world().rank}.json"), "w") as f:
        f.write(buf.getvalue())
    return rc


if __name__ == "__main__":
    if sys.argv[1] == "info":
        sys.exit(info(sys.argv[2]))
    if sys.argv[1] == "train":
        args = sys.argv[2:]
        steps = int(args[args.index("--steps") + 1]) if "--steps" in args else None
        dtype = args[args.index("--dtype") + 1] if "--dtype" in args else None
        stop_rank = int(args[args.index("--stop-on-rank") + 1]) if "--stop-on-rank" in args else None
        train(args[0], args[1], steps, dtype, stop_rank)
    else:
        fault, step, rank = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        sys.exit(cli(fault, step, rank, sys.argv[sys.argv.index("--") + 1:]))
