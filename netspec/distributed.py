"""Data-parallel training over MPI: ``mpiexec -n K netspec run SPEC``.

Design: every rank holds the whole model and the whole dataset, and draws the
same global batch (the batch sampler's random stream derives from the spec seed
alone). Rank r takes the r-th contiguous share of that batch (shares differ by
at most one sample), computes the gradient of its share's mean loss, scales it
by ``share / batch`` and the ranks sum the results with **one** ``Allreduce`` on a
contiguous buffer that also carries the weighted loss and a stop flag. Each rank
then applies the same optimizer update to the same parameters, so they stay
identical without ever being sent.

Launched without ``mpiexec`` (or with one process) nothing here imports mpi4py:
``world()`` is a serial stand-in whose collectives do nothing. Under ``mpiexec``
with more than one process, mpi4py is required (``pip install "netspec[mpi]"``).

Every rank must train the same spec on the same data: before the first step the
ranks compare their specs (data paths aside) and a checksum of their arrays, and
refuse to start, with one error line, when any rank differs from rank 0 (a host
whose data file differs would otherwise train silently on a mix).

Failure: an exception on one rank while the others wait in a collective would
hang the job, so ``guard()`` reports it on stderr and calls ``Abort``, which ends
every rank. Errors every rank hits alike (a spec mistake, a diverged loss, a
signal) are agreed on collectively and reported once, by rank 0.
"""
import contextlib
import hashlib
import os
import sys
import time
import traceback

import numpy as np

from . import errors
from .errors import NetspecError
from .spec import first_difference

# What MPI launchers put in the environment: MPICH/Intel MPI (Hydra), Open MPI, MVAPICH.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")

ABORT_GRACE = 0.5   # seconds a failing rank waits after reporting its error, before MPI Abort


def _env_int(names):
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return None


def launched_size():
    """Processes the launcher started (1 when not under an MPI launcher); read from the environment."""
    return _env_int(_SIZE_VARS) or 1


def local_ranks():
    """Ranks on this host, as the launcher says (all of them when it does not say)."""
    return _env_int(_LOCAL_SIZE_VARS) or launched_size()


class Serial:
    """One process: every collective is the identity."""
    rank, size, local_size = 0, 1, 1
    name = "serial"

    def allreduce(self, buf):
        return buf

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def barrier(self):
        pass

    def abort(self, code):
        sys.exit(code)


class MPIWorld:
    """MPI.COMM_WORLD behind the few collectives the trainer needs."""
    name = "mpi"

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.allreduce_seconds = 0.0

    def allreduce(self, buf):
        """Sum a contiguous array over all ranks, in place."""
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        return buf

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)  # Abort tears the job down from outside; never continue past it


_WORLD = None


def world():
    """The process group this process trains in: MPIWorld under mpiexec with K > 1, else Serial."""
    global _WORLD
    if _WORLD is None:
        if launched_size() <= 1:
            _WORLD = Serial()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise NetspecError(f"started by an MPI launcher with {launched_size()} processes, but mpi4py "
                                   "is not installed: pip install \"netspec[mpi]\" (brings mpi4py and mpich)") from None
            comm = MPI.COMM_WORLD
            _WORLD = MPIWorld(comm, MPI) if comm.Get_size() > 1 else Serial()
    return _WORLD


def share(n, size, rank):
    """[lo, hi) of rank's contiguous share of n items: the first n % size ranks get one more."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class CollectiveError(Exception):
    """An error every rank agreed on; rank 0 reports it, the others exit quietly with the same code."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def agree(comm, fn):
    """Run ``fn`` on every rank; if it raised a netspec error on any rank, raise that error on all.

    For setup steps (spec, data, run directory) where a failure on one rank would
    otherwise leave the others waiting in the first collective of training.
    """
    if comm.size == 1:
        return fn()
    try:
        result, failure = fn(), None
    except NetspecError as exc:
        result, failure = None, exc
    reports = comm.allgather(None if failure is None else (type(failure).__name__, str(failure)))
    first = next(((r, rep) for r, rep in enumerate(reports) if rep is not None), None)
    if first is None:
        return result
    rank, (kind, message) = first
    error = failure if failure is not None and rank == comm.rank else _remote(kind, message, rank)
    raise CollectiveError(error)


def data_checksum(arrays):
    """A checksum of named arrays (values, dtypes and shapes), to compare across ranks."""
    h = hashlib.blake2b(digest_size=16)
    for name, a in arrays.items():
        if a is None:   # a tuning trial's trainer holds no test set
            h.update(f"{name} none;".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{name} {a.dtype.str} {a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def check_same_inputs(comm, spec, arrays):
    """Raise, on every rank alike, if any rank's spec (its train.data aside) or data differs from rank 0's.

    ``spec`` is the spec as a plain dict, ``arrays`` the data by name. Data paths are left out of the comparison (a
    relative path pins to different folders on different hosts); the data they hold is
    compared by checksum instead. Every rank reaches this after setup succeeded on all.
    """
    if comm.size == 1:
        return
    model_part = {k: v for k, v in spec.items() if k != "train"}
    model_part["train"] = {k: v for k, v in (spec.get("train") or {}).items() if k != "data"}
    facts = comm.allgather((model_part, data_checksum(arrays)))
    first_spec, first_data = facts[0]
    for rank, (other_spec, other_data) in enumerate(facts[1:], 1):
        if other_spec != first_spec:
            where = first_difference(first_spec, other_spec)
            raise CollectiveError(errors.SpecError(
                f"rank {rank} of {comm.size} was given a different spec than rank 0{where}: every rank must "
                "run the same spec"))
        if other_data != first_data:
            raise CollectiveError(errors.DataError(
                f"rank {rank} of {comm.size} loaded different data than rank 0 (checksum {other_data[:12]} vs "
                f"{first_data[:12]}): every rank must read the same dataset; check the data files on each host"))


def _remote(kind, message, rank):
    cls = getattr(errors, kind, errors.NetspecError)
    try:
        exc = cls(message)
    except TypeError:
        exc = errors.NetspecError(message)
    if rank:
        exc.args = (f"{message} (on rank {rank})",)
    return exc


@contextlib.contextmanager
def guard(comm, code=1):
    """End the whole job when this rank fails alone: report the error on stderr, then Abort.

    A CollectiveError, or an exception marked ``collective`` (every rank raised it at the
    same step), passes through to be reported once, by rank 0.
    """
    if comm.size == 1:
        yield
        return
    try:
        yield
    except (CollectiveError, SystemExit):
        raise
    except BaseException as exc:
        if getattr(exc, "collective", False):  # raised on every rank alike (a diverged loss, a signal)
            raise
        print(f"netspec: rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}; "
              "ending every rank (MPI Abort)", file=sys.stderr, flush=True)
        if not isinstance(exc, Exception) or os.environ.get("NETSPEC_DEBUG"):
            traceback.print_exc()
        exit_code = getattr(exc, "exit_code", None)
        # the launcher's proxy forwards this rank's stderr through a pipe, and an abort tears the
        # job down at once: without a pause the message above was lost in 2 of 16 test runs (0 of 26 with it)
        time.sleep(ABORT_GRACE)
        comm.abort(exit_code if isinstance(exit_code, int) else code)


def info():
    """Rank, size, ranks on this host and OpenMP threads, for ``netspec info``."""
    if launched_size() <= 1:
        return {"launched_by_mpi": False}
    try:
        w = world()
    except Exception as exc:  # mpi4py missing: say so, do not fail `info`
        return {"launched_by_mpi": True, "size": launched_size(), "error": str(exc)}
    return {"launched_by_mpi": True, "rank": w.rank, "size": w.size, "local_size": w.local_size,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


class GradientReducer:
    """Sum the ranks' weighted gradients with one Allreduce on one preallocated buffer.

    The buffer holds every gradient (in the model's parameter order), then the
    weighted loss, then a stop flag; ``reduce`` returns views into it.
    """

    def __init__(self, comm, params, dtype):
        self.comm = comm
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.buf = np.zeros(int(self.offsets[-1]) + 2, dtype=np.float64 if dtype == np.float64 else np.float32)
        self.views = {k: self.buf[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
                      for i, k in enumerate(self.names)}

    def reduce(self, grads, weight, loss, stop):
        """(summed grads as views, global loss, any rank asked to stop)."""
        for k in self.names:
            if grads is None:
                self.views[k][...] = 0
            else:
                np.multiply(grads[k], weight, out=self.views[k], casting="unsafe")
        self.buf[-2] = loss * weight if grads is not None else 0.0
        self.buf[-1] = 1.0 if stop else 0.0
        self.comm.allreduce(self.buf)
        return self.views, float(self.buf[-2]), bool(self.buf[-1] > 0)


def average_buffers(comm, model):
    """Average the model's buffers (batchnorm running statistics) over the ranks, in place."""
    bufs = model.buffers
    if comm.size == 1 or not bufs:
        return
    arrays = list(bufs.values())
    flat = np.concatenate([np.asarray(b, np.float64).ravel() for b in arrays])
    comm.allreduce(flat)
    flat /= comm.size
    o = 0
    for b in arrays:
        np.copyto(b, flat[o:o + b.size].reshape(b.shape), casting="unsafe")
        o += b.size
