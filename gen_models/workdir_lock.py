"""One run per workdir: an exclusive lock held for the life of a training run.

``<workdir>/lock`` is locked with ``flock`` (on NFS the kernel maps it to a POSIX lock) and
holds ``{"host", "pid", "since"}`` of the run holding it. The kernel releases the lock when its
process dies, however it dies (even SIGKILL), so a lock left by a dead run is free: the next run
takes it over with a warning that names the dead run. A clean exit empties the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from gen_models import workdir as workdir_lib
from gen_models.errors import UserError
from gen_models.logs import warning


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors="replace").strip()
  try:
    holder = json.loads(text) if text else {}
  except json.JSONDecodeError:
    holder = {"unreadable": text[:80]}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
  since = holder.get("since")
  when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else ""
  return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds ``<workdir>/lock`` or raises a one-line UserError.

  Raises:
    UserError: a live run holds the lock (the message names its host and pid).
  """

  def __init__(self, workdir: str):
    self.path = workdir_lib.lock_path(workdir)
    self._fd: int | None = None

  def acquire(self) -> None:
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
      raise UserError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read(fd)
      os.close(fd)
      pid = holder.get("pid", "PID")
      raise UserError(
        f"workdir {os.path.dirname(self.path)} is in use by a run ({_describe(holder)}); "
        f"wait for it, stop it (kill -TERM {pid}: it saves a checkpoint) or use another --workdir"
      ) from None
    previous = _read(fd)
    if previous:  # The lock is free but not empty: its run died without releasing it.
      warning(f"taking over the lock of a run that is no longer running ({_describe(previous)})")
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 3)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Empties the lock file (a clean exit) and releases the lock."""
    if self._fd is None:
      return
    with contextlib.suppress(OSError):
      os.ftruncate(self._fd, 0)
    os.close(self._fd)  # Closing the last descriptor releases the flock.
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
