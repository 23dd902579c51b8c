"""Run outputs: ``metrics.jsonl``, TensorBoard events, sample PNGs and the console line.

Only process 0 writes. ``metrics.jsonl`` is appended to: after a resume, steps between the last
checkpoint and the interruption appear twice; the later line is the one of the resumed run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import logging

from gen_models import workdir as workdir_lib


class MetricWriter:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and TensorBoard, images to PNG and TB.

  A population's members (``members``: objects with ``index`` and ``name``) each get their own
  TensorBoard run directory and sample directory (``<member folder>`` under ``tensorboard/`` and
  ``samples/``: :mod:`gen_models.workdir`), and ``metrics.jsonl`` rows that carry ``member``
  (the index) and ``member_name``.
  """

  def __init__(self, workdir: str, members=None):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb, self._member_tb, self._members = None, {}, {}
    if self.active:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(workdir_lib.tensorboard_dir(workdir))
      os.makedirs(workdir_lib.samples_dir(workdir), exist_ok=True)
      for m in members or ():
        self._members[m.index] = m
        self._member_tb[m.index] = SummaryWriter(workdir_lib.tensorboard_dir(workdir, m))
        os.makedirs(workdir_lib.samples_dir(workdir, m), exist_ok=True)

  def scalars(self, step: int, values: dict[str, float], member: int | None = None) -> None:
    if not self.active:
      return
    record = {"step": int(step), "time": round(time.time(), 3)}
    if member is not None:
      record.update(member=int(member), member_name=self._members[member].name)
    record.update({k: float(v) for k, v in values.items()})
    with open(workdir_lib.metrics_path(self.workdir), "a") as f:
      f.write(json.dumps(record) + "\n")
    tb = self._tb if member is None else self._member_tb[member]
    for k, v in values.items():
      tb.add_scalar(k, float(v), int(step))

  def image(self, step: int, name: str, array: np.ndarray, member: int | None = None) -> str | None:
    """Saves ``array (H, W, 3) uint8`` as ``samples/<name>_<step>.png`` (a member's in its
    folder: :func:`gen_models.workdir.sample_path`); returns the path."""
    if not self.active:
      return None
    from gen_models.pictures import save_png

    who = None if member is None else self._members[member]
    path = workdir_lib.sample_path(self.workdir, name, step, who)
    save_png(array, path)
    tb = self._tb if member is None else self._member_tb[member]
    tb.add_image(name, array, int(step), dataformats="HWC")
    return path

  def close(self) -> None:
    for tb in (self._tb, *self._member_tb.values()):
      if tb is not None:
        tb.close()


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
  """Steps/s over the last interval and the ETA to ``total`` steps, as one console line."""

  def __init__(self, start_step: int, total: int):
    self.total = total
    self._step, self._time = start_step, time.perf_counter()

  def line(self, step: int, values: dict[str, float]) -> tuple[str, float]:
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    # Grouped metrics ("kl_per_dim/3") go to metrics.jsonl and TensorBoard, not the console.
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()) if "/" not in k)
    return (
      f"step {step}/{self.total} | {rate:.2f} steps/s | ETA {format_duration(eta)} | {shown}",
      rate,
    )


def info(msg: str) -> None:
  if jax.process_index() == 0:
    logging.info("%s", msg)


def warning(msg: str) -> None:
  if jax.process_index() == 0:
    logging.warning("%s", msg)


class ProgressBar:
  """A console progress bar for long host-side work (feature extraction, metrics), on stderr.

  ``bar = ProgressBar(stream)``; ``bar(label, done, total)`` redraws at most every
  ``min_interval`` seconds (``\\r`` on a terminal, one line per ~10% otherwise, so logs stay
  short) and ends the line when ``done == total``. Only process 0 draws.
  """

  def __init__(self, stream=None, min_interval: float = 0.5):
    self.stream = stream if stream is not None else sys.stderr
    self.min_interval = min_interval
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._label, self._start, self._last, self._last_pct = None, 0.0, 0.0, -1

  def __call__(self, label: str, done: int, total: int) -> None:
    if jax.process_index() != 0:
      return
    now = time.perf_counter()
    if label != self._label:
      self._label, self._start, self._last, self._last_pct = label, now, 0.0, -1
    finished = done >= total
    pct = int(100 * done / max(total, 1))
    if not finished and (
      now - self._last < self.min_interval or (not self._tty and pct // 10 == self._last_pct // 10)
    ):
      return
    self._last, self._last_pct = now, pct
    elapsed = now - self._start
    eta = elapsed * (total - done) / done if done else float("inf")
    width = 30
    bar = "#" * (width * done // max(total, 1))
    line = (
      f"{label}: [{bar:<{width}}] {done}/{total} {pct:3d}% "
      f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}"
    )
    end = "\n" if finished or not self._tty else ""
    self.stream.write(("\r" if self._tty else "") + line + end)
    self.stream.flush()
