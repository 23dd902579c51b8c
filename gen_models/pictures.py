"""PNG pictures of samples: image grids (Pillow) and the 2-D toy figure, real and generated
points over the critic's contours (matplotlib, drawn off-screen by the Agg canvas)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """Tiles ``(N, H, W, C)`` uint8 images into one ``(rows·(H+pad)+pad, cols·(W+pad)+pad, 3)``."""
  images = np.asarray(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, im in enumerate(images):
    r, k = divmod(i, columns)
    grid[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
    ] = im
  return grid


def figure_to_array(fig) -> np.ndarray:
  """A matplotlib ``Figure`` rendered by the Agg canvas → ``(H, W, 3)`` uint8 (no display)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def toy_plot(
  real: np.ndarray,
  fake: np.ndarray,
  *,
  title: str,
  critic: Callable[[np.ndarray], np.ndarray] | None = None,
  critic_label: str = "critic output D(x)",
  resolution: int = 80,
  margin: float = 1.4,
) -> np.ndarray:
  """Real and generated 2-D points over the critic's value as filled contours.

  The view is the square ``[-e, e]²`` with ``e = margin · max|real|``; generated points outside
  it are counted in the legend rather than drawn.

  Args:
    real, fake: ``(N, 2)`` and ``(M, 2)`` points in data units (non-finite ones are dropped).
    title: the figure title (the trainer puts the step and the W1/noise-floor ratio there).
    critic: ``points (K, 2) float32 → (K,)``, evaluated on a ``resolution²`` grid over the view
      (None: no contours).
    critic_label: the colour bar's label.

  Returns:
    ``(H, W, 3)`` uint8, about 600 × 520 pixels.
  """
  from matplotlib.figure import Figure

  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  fake = fake[np.all(np.isfinite(fake), axis=1)]
  extent = margin * float(np.max(np.abs(real[np.isfinite(real)]), initial=1e-3))
  fig = Figure(figsize=(6.0, 5.2), dpi=100, layout="constrained")
  ax = fig.add_subplot()
  if critic is not None:
    axis = np.linspace(-extent, extent, resolution)
    gx, gy = np.meshgrid(axis, axis)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    values = np.asarray(critic(points), np.float64).reshape(resolution, resolution)
    filled = ax.contourf(gx, gy, np.ma.masked_invalid(values), levels=20, cmap="Greys")
    fig.colorbar(filled, ax=ax, label=critic_label)
  outside = int(np.sum(np.any(np.abs(fake) > extent, axis=1)))
  fake_label = f"generated ({len(fake)}" + (f", {outside} outside the view)" if outside else ")")
  ax.scatter(fake[:, 0], fake[:, 1], s=5, c="tab:blue", label=fake_label)
  ax.scatter(real[:, 0], real[:, 1], s=5, c="tab:orange", label=f"real ({len(real)})")  # On top.
  ax.set(xlim=(-extent, extent), ylim=(-extent, extent), xlabel="$x_1$", ylabel="$x_2$")
  ax.set_aspect("equal")
  ax.set_title(title)
  ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
  return figure_to_array(fig)


def save_png(array: np.ndarray, path: str) -> None:
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
