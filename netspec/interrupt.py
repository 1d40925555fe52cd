"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (kill, systemd, Slurm, containers) at a step boundary.

Design: while training, both signals only set a flag; the loop checks it after
each step, between two updates, so the checkpoint written on the way out is
consistent with the step count. Signals arriving while that checkpoint is
being written are recorded and otherwise ignored, so a second Ctrl-C can no
longer interrupt an update or a save half-way. The previous handlers come back
when the run ends. Outside the main thread, or when another handler owns
SIGINT, nothing is installed and Python's default behaviour stays.
"""
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal at a step boundary; ``signum`` says which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self):
        """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """Context manager: defer SIGINT and SIGTERM to ``check()`` calls between steps."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = []
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            old = signal.getsignal(sig)
            if old not in (signal.default_int_handler, signal.SIG_DFL):
                continue  # someone else handles this signal; leave it alone
            self._old[sig] = old
            signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False

    def _handler(self, signum, frame):
        self.received.append(signum)

    @property
    def pending(self):
        return bool(self.received)

    def check(self):
        """Raise Interrupted for the first signal received, if any."""
        if self.received:
            raise Interrupted(self.received[0])
