r"""2-D convolutions with the parameters of ``flax.linen.Conv`` / ``ConvTranspose``, fast on CPU.

:class:`Conv` and :class:`ConvTranspose` take the same arguments as flax's modules, create the
same parameters (``kernel (kh, kw, C_in, C_out)``, ``bias (C_out,)``, same initialisers, same
auto-names ``Conv_0``, ``ConvTranspose_0``) and compute the same function. Only *how* they
compute it differs, chosen by ``impl`` (config key ``conv_impl``):

``"xla"``
    ``lax.conv_general_dilated`` / ``lax.conv_transpose``, as flax does. A transposed conv is a
    convolution of the input dilated by the stride (``lhs_dilation``), and so is the
    input-gradient of every strided conv. XLA:CPU runs those up to 30× slower than PyTorch
    (measured: ``python -m experiments.bench.train --layers``), so on CPU every backward pass
    of a strided conv net, and every transposed conv, is slow.

``"space_to_depth"``
    Only stride-1 convolutions, in the forward pass and in every derivative:

    * strided conv, stride s, kernel k: with ``t = s·q + r``,
      ``y[i] = Σ_t x_pad[s·i + t] w[t] = Σ_q Σ_r X[i + q, r] · w[s·q + r]``, where
      ``X[j, r] = x_pad[s·j + r]`` is the space-to-depth rearrangement of the padded input
      (``s²·C`` channels) — a stride-1 ``⌈k/s⌉``-tap convolution of ``X`` with the kernel
      zero-padded to a multiple of s and rearranged the same way;
    * transposed conv (flax/lax semantics: the input dilated by s, padded by ``(a, b)``,
      correlated with ``w``): output phase ``φ`` of ``n = s·m + φ`` is
      ``y[s·m + φ] = Σ_u x[m + u] · w[s·u + a − φ]`` — one stride-1 convolution of ``x`` whose
      kernel holds all ``s²`` phase kernels as ``s²·C_out`` output channels, then depth-to-space
      (the "sub-pixel convolution" of Shi et al. 2016).

    A stride-1 convolution's input- and weight-gradients are stride-1 convolutions again.

``"subpixel"``
    Strided convs run forward as they are (XLA:CPU is as fast as PyTorch there), and every
    convolution with input dilation is replaced by its sub-pixel form: the transposed conv
    above, and, through a ``jax.custom_vjp``, the input-gradient of a strided conv (a transposed
    conv with the flipped kernel) — whose own input-gradient is a strided conv again, so the
    double backward of a gradient penalty stays free of input dilation too. Weight gradients
    are XLA's (kernel-dilated, not input-dilated).

``"phases"``
    ``"subpixel"`` with two changes that pay on XLA:CPU. (1) A sub-pixel transposed conv with
    more than ``PHASES_MIN_OUT`` output channels runs as ``s_h·s_w`` stride-1 convs, one per
    output phase, each with only its own taps (a strided slice of the kernel): ``subpixel``'s
    single conv zero-pads every phase kernel to ``⌈k/s⌉ + 1`` taps per dimension (k = 4, s = 2:
    3×3 where a phase has 2×2, 2.25× the multiply-adds). (2) Its kernel-gradient is taken
    through the adjoint, ``⟨dz, conv_transpose(x, w)⟩ = ⟨x, conv(dz, flip(w))⟩``: the
    kernel-gradient of a strided conv (XLA's kernel-dilated filter gradient), not of the phase
    convs. No input dilation in any order of derivative either.

``"gemm"``
    No convolution at all: matrix products, pads, slices and reshapes. A strided conv is
    space-to-depth, **one matrix product, then shifted sums**: with ``X`` the space-to-depth
    rearrangement above (``(B, H_q, W_q, s²·C)``) and the kernel rearranged into
    ``W (s²·C, q_h·q_w·O)`` (``q = ⌈k/s⌉`` taps per dimension), ``Z = X @ W`` and
    ``y[i, j] = Σ_{a, b} Z[i + a, j + b, (a, b)]``. For inputs of 1–3 channels (``s²·C`` below
    ``PATCHES_MAX_DEPTH``) it gathers the patches instead (``kh·kw·C`` values per output
    pixel, one matrix product with the kernel). A transposed conv is the linear transpose of a
    strided conv (the flipped kernel, the pads of :func:`_dilated_conv_bwd`), taken by
    ``jax.linear_transpose``. Every derivative, by autodiff, is again matrix products of the
    same shapes (``Xᵀ @ dZ``, ``dZ @ Wᵀ``) with pads and slices, so no input dilation in any
    order. XLA:CPU runs matrix products with inner dimensions ≥ 64 near its GEMM rate and
    its conv kernels at a fraction of it. With ``k`` a multiple of ``s`` (no zero taps) this
    pays when both channel counts are ≥ ``GEMM_MIN_CHANNELS`` (the β-VAE's middle layers) and
    for 1–3 channel images (the β-VAE's first conv and last transposed conv: their XLA filter
    gradients are slow). It loses where a 5×5 kernel is padded to 6×6 taps (the DCGAN's
    middle layers), and for the DCGAN's 3-channel layers its patches doubled the step's compile
    time for no measurable gain.

    **Stride 1** with both channel counts ≥ ``GEMM_MIN_CHANNELS`` (the ResNets' and the RealNVP
    s/t nets' convs): a 1×1 conv without padding is one matrix product (in every derivative);
    any other is XLA's conv forward and for its input-gradient (stride-1 convs, fast), with its
    kernel-gradient as one matrix product per tap, ``dw[a, b] = x_pad[:, a:a+H', b:b+W']ᵀ · dy``
    over ``B·H'·W'`` rows (:func:`_stride_one_conv`): XLA:CPU computes that gradient as a
    convolution over the batch, under 10 GFLOP/s for a 3×3 conv of 32²×64, batch 64, against
    36 as products (the layer 2.9× faster, docs/BENCHMARKS.md). Every other stride-1 conv is
    XLA's under every ``impl``.

``"auto"`` (default)
    On CPU ``"gemm"`` where it pays (above; ``_gemm_pays``: every β-VAE layer and the stride-1
    convs of the ResNets and RealNVP s/t nets), else
    ``"phases"``, except transposed convs with at most ``XLA_MAX_OUT`` output channels, which
    keep XLA's own kernel (the DCGAN generator's last layer).
    ``"subpixel"`` on GPU: on an H200 (jax 0.11.2, 2026-11-26) it made the β-VAE step 2.2× and
    the DCGAN WGAN-GP step 2.0× faster than cuDNN's own strided and transposed kernels (the
    last transposed conv of the VAE decoder, C_out = 1, took 1.5 ms with ``xla`` and 0.2 ms
    with ``subpixel``); ``"phases"`` has not been measured on a GPU. No TPU has been measured:
    there XLA's own kernels are kept. Measurements: docs/BENCHMARKS.md.

All of them agree to float32 round-off (tests/test_nn_conv.py checks values, first and second
derivatives against ``lax`` for every kernel size, stride and padding the nets use). Only 2-D
inputs ``(B, H, W, C)`` are supported, without kernel dilation or feature groups: flax's other
arguments do not exist here (a ``TypeError``), and a bad shape or padding is a ``ValueError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gen_models import platform
from gen_models.errors import UserError

IMPLS = ("auto", "xla", "space_to_depth", "subpixel", "phases", "gemm")
# "phases": transposed convs with at most this many output channels keep the one-conv sub-pixel
# form (per-phase convs with 1–4 output channels are slow on XLA:CPU: 111 ms against 3.3 ms
# for the 32²×32 → 64²×1 layer of the β-VAE decoder, batch 64, forward).
PHASES_MIN_OUT = 4
# auto on CPU leaves transposed convs with at most this many output channels to XLA's own
# kernel (fastest there, forward + backward, for the β-VAE's and the DCGAN's last layers).
XLA_MAX_OUT = 4
# auto on CPU uses "gemm" for strided and transposed convs whose kernel is a multiple of the
# stride and whose input and output channels are both at least this many (measured:
# docs/BENCHMARKS.md; with 1–3 channels the matrix product's inner dimension is 4–12).
GEMM_MIN_CHANNELS = 16
# "gemm" gathers patches (one matrix product of inner dimension kh·kw·C) instead of shifted
# sums when the space-to-depth depth s_h·s_w·C is below this (inputs of 1–3 channels).
PATCHES_MAX_DEPTH = 16
_DN = ("NHWC", "HWIO", "NHWC")

PaddingLike = str | int | Sequence[int | tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]


def check_impl(impl: str) -> str:
  """``impl`` if it names an implementation (the config key ``conv_impl``), else a UserError."""
  if impl not in IMPLS:
    raise UserError(f"unknown conv_impl {impl!r}; known: {', '.join(IMPLS)}")
  return impl


def resolve_impl(
  impl: str,
  backend: str | None = None,
  *,
  transpose: bool = False,
  out_channels: int | None = None,
  in_channels: int | None = None,
  kernel_size: Sequence[int] | None = None,
  strides: Sequence[int] | None = None,
) -> str:
  """The implementation ``impl`` names on ``backend`` (default: the platform being traced for,
  :func:`gen_models.platform.current`, which is the compile target's, not the host's) for a
  layer (a strided conv, or with ``transpose`` a transposed conv, of ``in_channels`` →
  ``out_channels`` with ``kernel_size`` and ``strides``; what is not given does not count).

  ``"auto"`` on CPU is ``"gemm"`` where it pays (:func:`_gemm_pays`); otherwise ``"xla"`` for
  a transposed conv with at most :data:`XLA_MAX_OUT` output channels and ``"phases"`` for the
  rest.
  ``"subpixel"`` on GPU (timed fastest on an H200: docs/BENCHMARKS.md). ``"xla"`` on TPU, chosen
  by the TPU compiler's estimates, not by a timing (nothing has run on a TPU): compiled for one
  v5e chip (``experiments.bench.compile --layers=xla,subpixel``), forward + both gradients of
  every conv shape of the DCGAN, β-VAE, ResNet and RealNVP nets at batch 64, ``"xla"`` has the
  fewer FLOPs on every layer and the lower roofline floor summed over each net (DCGAN 423 against
  527 µs, β-VAE 635 against 679 µs; equal at stride 1); the CPU's forms cost the ResNet step
  2.2× the bytes (docs/BENCHMARKS.md, "Before you rent accelerators").
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown conv implementation {impl!r}; known: {', '.join(IMPLS)}")
  if impl != "auto":
    return impl
  backend = platform.normalise(backend) if backend else platform.current()
  if backend == "cpu":
    shapes = kernel_size is not None and strides is not None
    channels = in_channels is not None and out_channels is not None
    if (
      shapes and channels and _gemm_pays(kernel_size, strides, in_channels, out_channels, transpose)
    ):
      return "gemm"
    small = transpose and out_channels is not None and out_channels <= XLA_MAX_OUT
    return "xla" if small else "phases"
  return "subpixel" if backend == "gpu" else "xla"


def _gemm_pays(kernel_size, strides, in_channels: int, out_channels: int, transpose: bool) -> bool:
  """Whether ``"gemm"`` is the fastest formulation of a layer on CPU (docs/BENCHMARKS.md).

  Only when every kernel size is a multiple of its stride (no zero taps in the shifted sums;
  for 5×5 kernels the patches' 25 strided slices through a gradient penalty's double backward
  doubled the DCGAN step's compile time for no measurable gain), and then when both channel
  counts are at least :data:`GEMM_MIN_CHANNELS`, or when the strided conv it computes (for a
  transposed conv: its adjoint, whose input has ``out_channels``) gathers patches —
  ``s_h·s_w·C`` below :data:`PATCHES_MAX_DEPTH`, an image's 1–3 channels.
  """
  if not all(k % s == 0 for k, s in zip(kernel_size, strides, strict=True)):
    return False
  depth = math.prod(strides) * (out_channels if transpose else in_channels)
  return depth < PATCHES_MAX_DEPTH or min(in_channels, out_channels) >= GEMM_MIN_CHANNELS


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
  t = (v, v) if isinstance(v, int) else tuple(v)
  if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and i >= 1 for i in t):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
  return int(t[0]), int(t[1])


def _explicit(padding: PaddingLike) -> Pads | str:
  """``"SAME"``/``"VALID"`` unchanged, an int or per-dim ints/pairs as ``((lo, hi), (lo, hi))``."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding {padding!r} is not supported; use SAME, VALID or integers")
    return padding.upper()
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  pads = []
  for p in padding:
    if isinstance(p, int):
      pads.append((p, p))
    elif len(p) == 2:
      pads.append((int(p[0]), int(p[1])))
    else:
      raise ValueError(f"invalid padding {padding!r}")
  if len(pads) != 2:
    raise ValueError(f"padding must give 2 spatial dimensions, got {padding!r}")
  return tuple(pads)


def _check_inputs(x: jax.Array, kernel: jax.Array) -> None:
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(
      f"expected x (B, H, W, C) and kernel (kh, kw, C, O), got {x.shape} and {kernel.shape}"
    )


def conv_pads(
  spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], padding: PaddingLike
) -> Pads:
  """The explicit ``(lo, hi)`` pads of a strided conv, as ``lax.conv_general_dilated`` uses."""
  pads = _explicit(padding)
  if isinstance(pads, str):
    return tuple(lax.padtype_to_pads(tuple(spatial), tuple(kernel), tuple(strides), pads))
  return pads


def conv_transpose_pads(
  kernel: Sequence[int], strides: Sequence[int], padding: PaddingLike
) -> Pads:
  """The ``(lo, hi)`` pads of the dilated input in ``lax.conv_transpose`` (flax's semantics).

  For ``"SAME"``/``"VALID"`` the transposed conv undoes the shape of the forward conv of that
  padding: ``SAME`` pads ``k + s − 2`` in all, ``k − 1`` (if ``s > k − 1``) or half of it
  rounded up before; ``VALID`` pads ``k + s − 2 + max(k − s, 0)``, ``k − 1`` before. Integer
  pads are used as they are.
  """
  pads = _explicit(padding)
  if not isinstance(pads, str):
    return pads
  out = []
  for k, s in zip(kernel, strides, strict=True):
    if pads == "SAME":
      total = k + s - 2
      lo = k - 1 if s > k - 1 else math.ceil(total / 2)
    else:
      total = k + s - 2 + max(k - s, 0)
      lo = k - 1
    out.append((lo, total - lo))
  return tuple(out)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int] = (1, 1),
  padding: PaddingLike = "SAME",
  impl: str = "auto",
) -> jax.Array:
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` in NHWC/HWIO, no bias.

  Args:
    x: ``(B, H, W, C)``. kernel: ``(kh, kw, C, O)``.
    strides: ``(sh, sw)``. padding: ``"SAME"``, ``"VALID"``, an int or per-dim ints/pairs.
    impl: see the module docstring.

  Returns:
    ``(B, H', W', O)`` with ``H' = ⌊(H + lo + hi − kh) / sh⌋ + 1`` (likewise ``W'``).
  """
  _check_inputs(x, kernel)
  strides = _pair(strides, "strides")
  kh, kw, c, o = kernel.shape
  pads = conv_pads(x.shape[1:3], (kh, kw), strides, padding)
  impl = resolve_impl(impl, in_channels=c, out_channels=o, kernel_size=(kh, kw), strides=strides)
  pads = tuple(tuple(p) for p in pads)
  stride_one_gemm = impl == "gemm" and min(c, o) >= GEMM_MIN_CHANNELS
  if strides == (1, 1) and stride_one_gemm and min(min(p) for p in pads) >= 0:
    if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)):  # One matrix product, all orders.
      return jnp.dot(x.reshape(-1, c), kernel.reshape(c, o)).reshape(*x.shape[:3], o)
    return _stride_one_conv(x, kernel, pads)
  if impl == "xla" or strides == (1, 1):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)
  if impl == "gemm":
    return _conv_gemm(x, kernel, strides, pads)
  if impl in ("subpixel", "phases"):
    return _strided_conv(x, kernel, strides, pads, impl == "phases")
  return _conv_space_to_depth(x, kernel, strides, pads)


def _space_to_depth_grid(x: jax.Array, kernel_shape, strides, pads):
  """The padded input of a strided conv on its space-to-depth grid, and the grid's sizes.

  Returns ``(x_pad, outs, taps)``: ``x_pad (B, s_h·H_q, s_w·W_q, C)`` is ``x`` padded by ``lo``
  before and padded or cropped after to exactly ``s·H_q`` rows (likewise columns), where
  ``H_q = H' + q_h − 1`` rows of the rearranged input are what the ``H'`` output rows need,
  ``q = ⌈k/s⌉`` taps per dimension; ``outs = (H', W')``, ``taps = (q_h, q_w)``.
  """
  outs, taps, cut = [], [], []
  for length, k, s, (lo, hi) in zip(x.shape[1:3], kernel_shape, strides, pads, strict=True):
    out = (length + lo + hi - k) // s + 1
    if out < 1:
      raise ValueError(f"conv output would be empty: input {x.shape}, kernel {kernel_shape}")
    q = -(-k // s)
    outs.append(out)
    taps.append(q)
    cut.append((lo, s * (out + q - 1) - length - lo))
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*cut[0], 0), (*cut[1], 0), (0, 0, 0)))
  return x, tuple(outs), tuple(taps)


def _space_to_depth(x_pad: jax.Array, strides) -> jax.Array:
  """``(B, s_h·H_q, s_w·W_q, C)`` → ``(B, H_q, W_q, s_h·s_w·C)``, channels as ``(r_h, r_w, c)``."""
  (sh, sw), (b, h, w, c) = strides, x_pad.shape
  x = x_pad.reshape(b, h // sh, sh, w // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // sh, w // sw, sh * sw * c)


def _conv_space_to_depth(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """The strided conv as space-to-depth + a stride-1 conv (module docstring)."""
  kh, kw, c, o = kernel.shape
  x, _, (qh, qw) = _space_to_depth_grid(x, kernel.shape[:2], strides, pads)
  x, (sh, sw) = _space_to_depth(x, strides), strides
  w = jnp.pad(kernel, ((0, qh * sh - kh), (0, qw * sw - kw), (0, 0), (0, 0)))
  w = w.reshape(qh, sh, qw, sw, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(qh, qw, sh * sw * c, o)
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DN)


def _conv_gemm(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """The strided conv as matrix products (``"gemm"``): ``(B, H, W, C)`` → ``(B, H', W', O)``.

  With ``s_h·s_w·C`` at least :data:`PATCHES_MAX_DEPTH`, space-to-depth and shifted sums:
  ``X (B, H_q, W_q, s_h·s_w·C)`` is the padded input rearranged as in
  :func:`_conv_space_to_depth`; the kernel, zero-padded to ``q·s`` taps, becomes
  ``W (s_h·s_w·C, q_h·q_w·O)``; ``Z = X @ W`` is ``(B, H_q, W_q, q_h, q_w, O)`` and
  ``y[:, i, j] = Σ Z[:, i + a, j + b, a, b]`` over the taps ``(a, b)``. With fewer input
  channels (an image's 1–3) that product's inner dimension would be tiny and ``Z`` many times
  the input, so the patches are gathered instead: ``P (B, H', W', kh·kw·C)`` (one strided slice
  of the padded input per tap) and ``y = P @ kernel (kh·kw·C, O)``.
  """
  kh, kw, c, o = kernel.shape
  b, (sh, sw) = x.shape[0], strides
  x, (oh, ow), (qh, qw) = _space_to_depth_grid(x, (kh, kw), strides, pads)
  if sh * sw * c < PATCHES_MAX_DEPTH:
    last = (sh * (oh - 1), sw * (ow - 1))
    patches = [
      x[:, i : i + last[0] + 1 : sh, j : j + last[1] + 1 : sw] for i in range(kh) for j in range(kw)
    ]
    p = jnp.concatenate(patches, axis=-1).reshape(b * oh * ow, kh * kw * c)
    return jnp.dot(p, kernel.reshape(kh * kw * c, o)).reshape(b, oh, ow, o)
  x = _space_to_depth(x, strides)
  hq, wq = x.shape[1:3]
  w = jnp.pad(kernel, ((0, qh * sh - kh), (0, qw * sw - kw), (0, 0), (0, 0)))
  w = w.reshape(qh, sh, qw, sw, c, o).transpose(1, 3, 4, 0, 2, 5).reshape(sh * sw * c, -1)
  z = jnp.dot(x.reshape(b * hq * wq, -1), w).reshape(b, hq, wq, qh, qw, o)
  terms = [z[:, i : i + oh, j : j + ow, i, j] for i in range(qh) for j in range(qw)]
  return functools.reduce(jnp.add, terms)


def _conv_s1(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride_one_conv(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  """XLA's stride-1 conv (``"gemm"`` with both channel counts ≥ :data:`GEMM_MIN_CHANNELS`),
  whose kernel-gradient is one matrix product per tap:
  ``dw[a, b] = x_pad[:, a : a + H', b : b + W']ᵀ · dy`` over ``B·H'·W'`` rows (XLA:CPU's own
  filter gradient, a convolution over the batch, ran under 10 GFLOP/s for 3×3, 32²×64, batch
  64: docs/BENCHMARKS.md). The input-gradient stays XLA's (a stride-1 conv again)."""
  return _conv_s1(x, kernel, pads)


def _stride_one_conv_fwd(x, kernel, pads):
  return _conv_s1(x, kernel, pads), (x, kernel)


def _stride_one_conv_bwd(pads, residuals, dy):
  x, kernel = residuals
  kh, kw, c, o = kernel.shape
  _, x_vjp = jax.vjp(lambda v: _conv_s1(v, kernel, pads), x)
  x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  oh, ow = dy.shape[1:3]
  rows = dy.reshape(-1, o)
  taps = [
    jnp.dot(
      x_pad[:, a : a + oh, b : b + ow].reshape(-1, c).T, rows, preferred_element_type=jnp.float32
    )
    for a in range(kh)
    for b in range(kw)
  ]
  return x_vjp(dy)[0], jnp.stack(taps).reshape(kh, kw, c, o).astype(kernel.dtype)


_stride_one_conv.defvjp(_stride_one_conv_fwd, _stride_one_conv_bwd)


def _adjoint_pads(kernel_shape, strides, pads, in_sizes, out_sizes) -> Pads:
  """The pads of the strided conv, with the flipped kernel, that is the adjoint of a transposed
  conv with ``pads`` from ``in_sizes`` to ``out_sizes``: ``(k − 1 − a, s·(n − 1) + k − m −
  (k − 1 − a))`` per dimension (``a`` its low pad, ``n`` in, ``m`` out)."""
  return tuple(
    (k - 1 - a, s * (n - 1) + k - m - (k - 1 - a))
    for k, s, (a, _), n, m in zip(kernel_shape, strides, pads, in_sizes, out_sizes, strict=True)
  )


def _conv_transpose_gemm(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """The transposed conv as the linear transpose of :func:`_conv_gemm` (``"gemm"``).

  ``conv_transpose(x, w, s, (a, ·))`` is the adjoint of the strided conv with the flipped
  kernel and pads ``(k − 1 − a, ·)`` (as in :func:`_dilated_conv_bwd`), so
  ``jax.linear_transpose`` of that conv computes it: ``(B, H, W, C)`` → ``(B, H', W', O)``.
  """
  kh, kw, c, o = kernel.shape
  outs = []
  for length, k, s, (a, hi) in zip(x.shape[1:3], (kh, kw), strides, pads, strict=True):
    out = s * (length - 1) + 1 + a + hi - k + 1
    if out < 1:
      raise ValueError(f"conv_transpose output would be empty: {x.shape}, {kernel.shape}")
    outs.append(out)
  flipped = _flip(kernel)
  adjoint_pads = _adjoint_pads((kh, kw), strides, pads, x.shape[1:3], outs)
  shape = jax.ShapeDtypeStruct((x.shape[0], *outs, o), jnp.result_type(x, kernel))
  adjoint = jax.linear_transpose(lambda v: _conv_gemm(v, flipped, strides, adjoint_pads), shape)
  return adjoint(x.astype(shape.dtype))[0]


def _phase_taps(k: int, s: int, lo: int) -> tuple[int, np.ndarray]:
  """``(u_lo, index)`` with ``index[v, φ] = s·(v + u_lo) + lo − φ`` (``k`` where out of range).

  Output phase ``φ`` of a transposed conv reads input ``m + u`` with kernel tap
  ``s·u + lo − φ``; ``u`` runs over ``u_lo .. u_hi`` for all phases together.
  """
  u_lo = -(lo // s)  # = ⌈−lo / s⌉, the smallest u with a tap in range (at φ = 0).
  u_hi = (k - 1 + s - 1 - lo) // s  # The largest (at φ = s − 1).
  v = np.arange(u_hi - u_lo + 1)[:, None]
  phi = np.arange(s)[None, :]
  index = s * (v + u_lo) + lo - phi
  return u_lo, np.where((index >= 0) & (index < k), index, k)


def conv_transpose2d(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int] = (1, 1),
  padding: PaddingLike = "SAME",
  impl: str = "auto",
) -> jax.Array:
  """``lax.conv_transpose(x, kernel, strides, padding)`` (``transpose_kernel=False``), no bias.

  Args:
    x: ``(B, H, W, C)``. kernel: ``(kh, kw, C, O)``.
    strides: ``(sh, sw)``. padding: ``"SAME"``, ``"VALID"`` (those of the forward conv being
      transposed) or explicit pads of the dilated input, as flax's ``ConvTranspose``.
    impl: see the module docstring.

  Returns:
    ``(B, H', W', O)`` with ``H' = sh·(H − 1) + 1 + lo + hi − kh + 1`` (``SAME``: ``sh·H``).
  """
  _check_inputs(x, kernel)
  strides = _pair(strides, "strides")
  kh, kw, c, o = kernel.shape
  pads = conv_transpose_pads((kh, kw), strides, padding)
  impl = resolve_impl(
    impl, transpose=True, in_channels=c, out_channels=o, kernel_size=(kh, kw), strides=strides
  )
  if impl == "xla" or strides == (1, 1):
    return lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=_DN)
  if impl == "gemm":
    return _conv_transpose_gemm(x, kernel, strides, pads)
  if impl in ("subpixel", "phases"):
    return _dilated_conv(x, kernel, strides, pads, impl == "phases")
  return _conv_transpose_depth_to_space(x, kernel, strides, pads)


def _conv_transpose_depth_to_space(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """The transposed conv as a stride-1 conv + depth-to-space (module docstring)."""
  kh, kw, c, o = kernel.shape
  b = x.shape[0]
  (sh, sw), out_sizes, blocks, cut, indices = strides, [], [], [], []
  for length, k, s, (lo, hi) in zip(x.shape[1:3], (kh, kw), strides, pads, strict=True):
    out = s * (length - 1) + 1 + lo + hi - k + 1
    if out < 1:
      raise ValueError(f"conv_transpose output would be empty: {x.shape}, {kernel.shape}")
    u_lo, index = _phase_taps(k, s, lo)
    m = -(-out // s)  # Output rows per phase.
    out_sizes.append(out)
    blocks.append(m)
    indices.append(index)
    cut.append((-u_lo, m + index.shape[0] - 1 - length + u_lo))
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*cut[0], 0), (*cut[1], 0), (0, 0, 0)))
  # Phase kernels: w[index_h[vh, φh], index_w[vw, φw]], zero where the index is k (out of range).
  w = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  ih, iw = indices
  w = w[ih[:, :, None, None], iw[None, None, :, :]]  # (qh, sh, qw, sw, C, O)
  qh, qw = ih.shape[0], iw.shape[0]
  w = w.transpose(0, 2, 4, 1, 3, 5).reshape(qh, qw, c, sh * sw * o)
  z = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DN)
  mh, mw = blocks
  y = z.reshape(b, mh, mw, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, mh * sh, mw * sw, o)
  return y[:, : out_sizes[0], : out_sizes[1]]


def _conv_transpose_phases(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """The transposed conv as ``s_h·s_w`` stride-1 convs, one per output phase, each with only
  the taps of its phase, interleaved by depth-to-space (module docstring, ``"phases"``).

  The same function as :func:`_conv_transpose_depth_to_space`, which puts all phases into one
  conv whose phase kernels are zero-padded to the same ``⌈k/s⌉ + 1`` taps (for k = 4, s = 2:
  3×3 taps where each phase has 2×2, 2.25× the multiply-adds); here each phase conv reads only
  its own taps, a strided slice of the kernel.
  """
  kh, kw, c, o = kernel.shape
  b = x.shape[0]
  out_sizes, blocks, cut, taps = [], [], [], []
  for length, k, s, (lo, hi) in zip(x.shape[1:3], (kh, kw), strides, pads, strict=True):
    out = s * (length - 1) + 1 + lo + hi - k + 1
    if out < 1:
      raise ValueError(f"conv_transpose output would be empty: {x.shape}, {kernel.shape}")
    u_lo, index = _phase_taps(k, s, lo)
    m = -(-out // s)  # Output rows per phase.
    out_sizes.append(out)
    blocks.append(m)
    cut.append((-u_lo, m + index.shape[0] - 1 - length + u_lo))
    # Per phase φ: the rows v of the padded input with a tap in range (contiguous), and the
    # kernel taps index[v, φ] = s·(v + u_lo) + lo − φ for them (increasing in steps of s).
    taps.append([np.nonzero(index[:, phi] < k)[0] for phi in range(s)])
    taps[-1] = [(v, index[v, phi]) for phi, v in enumerate(taps[-1])]
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*cut[0], 0), (*cut[1], 0), (0, 0, 0)))
  (sh, sw), (mh, mw) = strides, blocks
  rows = []
  for vh, th in taps[0]:
    row = []
    for vw, tw in taps[1]:
      if len(vh) == 0 or len(vw) == 0:  # A phase no tap reaches (k < s): zeros.
        row.append(jnp.zeros((b, mh, mw, o), jnp.result_type(x, kernel)))
        continue
      w = kernel[th[0] : th[-1] + 1 : sh, tw[0] : tw[-1] + 1 : sw]
      xs = x[:, vh[0] : vh[-1] + mh, vw[0] : vw[-1] + mw]
      row.append(lax.conv_general_dilated(xs, w, (1, 1), "VALID", dimension_numbers=_DN))
    rows.append(jnp.stack(row, 3))  # (B, mh, mw, sw, O)
  y = jnp.stack(rows, 2).reshape(b, mh * sh, mw * sw, o)  # (B, mh, sh, mw, sw, O) → pixels.
  return y[:, : out_sizes[0], : out_sizes[1]]


def _flip(kernel: jax.Array) -> jax.Array:
  """``(kh, kw, C, O)`` → ``(kh, kw, O, C)``, spatially reversed: the kernel of the transpose."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _subpixel_transpose(x: jax.Array, kernel: jax.Array, strides, pads, phases: bool):
  """The transposed conv without input dilation: per-phase convs (``phases``, when the output
  has more than :data:`PHASES_MIN_OUT` channels) or one conv over all phases."""
  if phases and kernel.shape[3] > PHASES_MIN_OUT:
    return _conv_transpose_phases(x, kernel, strides, pads)
  return _conv_transpose_depth_to_space(x, kernel, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple, phases: bool):
  """XLA's strided conv, whose input-gradient is computed without input dilation."""
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)


def _strided_conv_fwd(x, kernel, strides, pads, phases):
  return _strided_conv(x, kernel, strides, pads, phases), (x, kernel)


def _strided_conv_bwd(strides, pads, phases, residuals, dy):
  """``dx[n] = Σ_i Σ_t [s·i + t − lo = n] dy[i] w[t]``: ``dy`` dilated by s, padded by
  ``(k − 1 − lo, ·)`` and correlated with the flipped kernel — a transposed conv."""
  x, kernel = residuals
  dx_pads = tuple(
    (k - 1 - lo, length + k - 2 - s * (out - 1) - (k - 1 - lo))
    for k, (lo, _), length, out, s in zip(
      kernel.shape[:2], pads, x.shape[1:3], dy.shape[1:3], strides, strict=True
    )
  )
  dx = _dilated_conv(dy, _flip(kernel), strides, dx_pads, phases)
  _, kernel_vjp = jax.vjp(
    lambda k: lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_DN), kernel
  )
  return dx, kernel_vjp(dy)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dilated_conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple, phases: bool):
  """``lax.conv_transpose(x, kernel, strides, pads)`` in its sub-pixel form."""
  return _subpixel_transpose(x, kernel, strides, pads, phases)


def _dilated_conv_fwd(x, kernel, strides, pads, phases):
  return _dilated_conv(x, kernel, strides, pads, phases), (x, kernel)


def _dilated_conv_bwd(strides, pads, phases, residuals, dz):
  """``dx[j] = Σ_t dz[s·j + a − t] w[t]``: a strided conv of ``dz`` padded by ``k − 1 − a``
  before, with the flipped kernel."""
  x, kernel = residuals
  dx_pads = _adjoint_pads(kernel.shape[:2], strides, pads, x.shape[1:3], dz.shape[1:3])
  dx = _strided_conv(dz, _flip(kernel), strides, dx_pads, phases)
  if phases:
    # ⟨dz, conv_transpose(x, w)⟩ = ⟨x, conv(dz, flip(w))⟩: the kernel-gradient is that of the
    # strided conv above at cotangent x (XLA's kernel-dilated filter gradient, faster on CPU
    # than the per-phase convs' filter gradients: 20 against 40 ms, 16²×32 → 32²×32, batch 64).
    _, kernel_vjp = jax.vjp(
      lambda k: lax.conv_general_dilated(dz, _flip(k), strides, dx_pads, dimension_numbers=_DN),
      kernel,
    )
    return dx, kernel_vjp(x)[0]
  _, kernel_vjp = jax.vjp(lambda k: _subpixel_transpose(x, k, strides, pads, phases), kernel)
  return dx, kernel_vjp(dz)[0]


_dilated_conv.defvjp(_dilated_conv_fwd, _dilated_conv_bwd)


class _ConvBase(nn.Module):
  """The attributes of flax's ``Conv``/``ConvTranspose`` that the nets use, plus ``impl``."""

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = "auto"

  def _params(self, x: jax.Array):
    kh, kw = _pair(self.kernel_size, "kernel_size")
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__} takes (B, H, W, C) inputs, got {x.shape}")
    kernel = self.param(
      "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
    )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

  def _finish(self, y: jax.Array, bias: jax.Array | None) -> jax.Array:
    return y if bias is None else y + bias


class Conv(_ConvBase):
  """``flax.linen.Conv`` for ``(B, H, W, C)`` inputs: ``(B, H', W', features)``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel, bias = self._params(x)
    return self._finish(conv2d(x, kernel, self.strides, self.padding, self.impl), bias)


class ConvTranspose(_ConvBase):
  """``flax.linen.ConvTranspose`` for ``(B, H, W, C)`` inputs: ``(B, H', W', features)``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel, bias = self._params(x)
    return self._finish(conv_transpose2d(x, kernel, self.strides, self.padding, self.impl), bias)
