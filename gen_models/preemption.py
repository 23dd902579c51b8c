"""Stopping a run cleanly on SIGTERM / SIGINT, at a step every process agrees on.

Schedulers (SLURM, Kubernetes, preemptible TPU VMs) ask a job to stop with SIGTERM and kill it
some seconds later; a user presses Ctrl-C (SIGINT). :class:`StopRequests` turns either signal
into a request that the trainer honours after the current step: it saves a checkpoint at that
step, waits for it, and exits with :data:`gen_models.errors.EXIT_STOPPED`.

One process: a Python signal handler records the signal; :meth:`StopRequests.reached` is true
at the first step that ends after it.

Several processes (``jax.distributed``): only some processes may receive the signal, yet all
must save at the same step, or their checkpoints would not match. JAX's preemption service
does this: the distributed runtime catches SIGTERM itself, tells the coordinator, and the
coordinator picks the step after the largest step any process has reached;
``multihost_utils.reached_preemption_sync_point(step)`` is true on every process at that step.
Python must then leave SIGTERM to the runtime's handler; SIGINT is recorded and re-raised as a
SIGTERM to this process, so that it goes through the same agreement.

Further signals while stopping are recorded and ignored: the save in progress completes.
"""

from __future__ import annotations

import os
import signal
import threading

from jax._src import distributed as _distributed
from jax.experimental import multihost_utils

from gen_models.logs import warning

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _sync_manager_active() -> bool:
  """Whether JAX's preemption sync manager runs (``jax.distributed`` with the service on)."""
  return _distributed.global_state.preemption_sync_manager is not None


class StopRequests:
  """A context manager that records SIGTERM / SIGINT; ``reached(step)`` says when to stop.

  ``reached`` must be called at every step, on every process (the multi-process agreement
  counts steps). Handlers are installed only from the main thread (Python allows no other);
  elsewhere the signals keep their previous behaviour. Previous handlers are restored on exit.
  """

  def __init__(self):
    self.signal_name: str | None = None  # The first signal this process received.
    self._multi = _sync_manager_active()
    self._previous: dict[int, object] = {}

  def _record(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      warning(f"{name} received while stopping; finishing the checkpoint first")
      return
    self.signal_name = name
    warning(f"{name} received: stopping after the current step with a checkpoint")
    if self._multi and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # Into JAX's preemption service: all agree on a step.

  def __enter__(self) -> StopRequests:
    if threading.current_thread() is threading.main_thread():
      # With the preemption service, SIGTERM belongs to the runtime's own handler.
      for signum in (signal.SIGINT,) if self._multi else _SIGNALS:
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def reached(self, step: int) -> bool:
    """True at the step where this run must save and stop (the same step on every process)."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM (to this or another process)"
        return True
      return False
    return self.signal_name is not None
