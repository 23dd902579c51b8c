r"""Kernel initialisers by name: flax's default, or TensorFlow's layers' default.

``"lecun_normal"``
    flax's default for ``Dense``, ``Conv`` and ``ConvTranspose`` (and for
    ``gen_models.nn.conv``'s layers): a truncated normal of variance ``1 / fan_in``.

``"glorot_uniform"``
    The default of TensorFlow 1's ``tf.layers.dense`` / ``conv2d`` / ``conv2d_transpose``
    (``tf.get_variable``'s default initialiser, ``glorot_uniform_initializer`` =
    ``variance_scaling(1, "fan_avg", "uniform")``, tensorflow/python/ops/init_ops.py), which
    disentanglement_lib's nets use: ``U(−b, b)`` with
    ``b = sqrt(6 / (fan_in + fan_out))``, variance ``b² / 3 = 2 / (fan_in + fan_out)``
    (Glorot & Bengio 2010).

Biases start at zero under both (flax's and TensorFlow's default alike).

Fans, as TensorFlow's ``_compute_fans`` takes them from the kernel's *stored* shape
``(kh, kw, A, B)``: ``fan_in = kh·kw·A``, ``fan_out = kh·kw·B`` (a dense ``(A, B)``: ``A`` and
``B``). A dense or conv kernel is stored ``(…, C_in, C_out)`` by both libraries. A transposed
conv's kernel is stored ``(kh, kw, C_out, C_in)`` by TensorFlow (``Conv2DTranspose.build``:
``kernel_size + (filters, input_dim)``) and ``(kh, kw, C_in, C_out)`` by flax, so TensorFlow's
``fan_in`` of a transposed conv is ``kh·kw·C_out``: :func:`kernel_init` with ``transpose=True``
reads the fans with the axes swapped, so that both numbers are TensorFlow's. Glorot's bound
uses only their sum ``kh·kw·(C_in + C_out)``, the same either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from gen_models.errors import UserError

INITS = ("lecun_normal", "glorot_uniform")


def check_init(name: str) -> str:
  """``name`` if it names an initialiser (config key ``vae.init``), else a UserError."""
  if name not in INITS:
    raise UserError(f"unknown initialiser {name!r}; known: {', '.join(INITS)}")
  return name


def kernel_init(name: str, *, transpose: bool = False) -> Any:
  """The flax initialiser of a kernel stored as flax stores it, ``(…, C_in, C_out)``.

  ``transpose``: the kernel of a transposed conv, whose fans TensorFlow reads from its own
  layout ``(kh, kw, C_out, C_in)`` (module docstring); only ``"glorot_uniform"`` reads them so,
  ``"lecun_normal"`` is flax's default unchanged.
  """
  if name == "lecun_normal":
    return nn.initializers.lecun_normal()
  if name == "glorot_uniform":
    if transpose:
      return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-1, out_axis=-2)
    return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
  raise ValueError(f"unknown initialiser {name!r}; known: {', '.join(INITS)}")
