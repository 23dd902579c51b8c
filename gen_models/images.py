"""PNG pictures of samples: image grids and 2-D scatter plots (Pillow only)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


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


def scatter(
  real: np.ndarray, fake: np.ndarray, size: int = 512, extent: float | None = None
) -> np.ndarray:
  """A ``(size, size, 3)`` uint8 scatter plot: real points blue, generated points orange."""
  both = np.concatenate([real, fake])
  extent = extent or float(np.max(np.abs(both[np.isfinite(both)]), initial=1.0)) * 1.1
  im = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(im)
  draw.line([(size // 2, 0), (size // 2, size)], fill=(220, 220, 220))
  draw.line([(0, size // 2), (size, size // 2)], fill=(220, 220, 220))
  for points, color in ((real, (31, 119, 180)), (fake, (255, 127, 14))):
    pix = (np.asarray(points) / extent * 0.5 + 0.5) * (size - 1)
    for x, y in pix[np.all(np.isfinite(pix), axis=1)]:
      draw.ellipse([x - 1.5, size - 1 - y - 1.5, x + 1.5, size - 1 - y + 1.5], fill=color)
  return np.asarray(im)


def save_png(array: np.ndarray, path: str) -> None:
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
