"""Saving matplotlib figures off-screen (Agg canvas; no display, no pyplot state)."""

from __future__ import annotations

import os

from gen_models.errors import UserError


def new_figure(width: float, height: float):
  """A ``Figure`` of ``width × height`` inches at 100 dpi, with a constrained layout."""
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig, path: str) -> str:
  """Writes ``fig`` as a PNG to ``path`` (atomically); returns the path.

  Raises:
    UserError: the file cannot be written.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  tmp = path + ".tmp.png"
  try:
    FigureCanvasAgg(fig).print_png(tmp)
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None
  return path
