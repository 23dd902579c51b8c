"""gen_models.nn.conv: the fast formulations equal lax's convolutions, values and derivatives.

The reference is ``lax.conv_general_dilated`` / ``lax.conv_transpose`` (what flax's modules call)
on the same random inputs and weights: outputs, the vector-Jacobian product with respect to the
input and the kernel for a random cotangent, and a second derivative (the gradient with respect
to the kernel of a function of the input-gradient, as the gradient penalty takes it).
"""

import re

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from gen_models import nn as gnn
from gen_models.errors import UserError
from gen_models.nn.conv import conv2d, conv_transpose2d

DN = ("NHWC", "HWIO", "NHWC")
FAST = ("space_to_depth", "subpixel", "phases", "gemm")
# Every (kernel, stride, padding) of the nets: DCGAN 5×5/2 SAME; the β-VAE 4×4/2 and 2×2/2
# SAME; ResNets 3×3/1 and 1×1/1; plus VALID and explicit pads, odd and even sizes.
PADDINGS = ("SAME", "VALID", ((1, 2), (2, 1)), 1)


def _reference(kind: str):
  if kind == "conv":
    return lambda x, w, s, p: lax.conv_general_dilated(
      x, w, s, gnn.conv.conv_pads(x.shape[1:3], w.shape[:2], s, p), dimension_numbers=DN
    )
  return lambda x, w, s, p: lax.conv_transpose(
    x, w, s, gnn.conv.conv_transpose_pads(w.shape[:2], s, p), dimension_numbers=DN
  )


def _ours(kind: str, impl: str):
  op = conv2d if kind == "conv" else conv_transpose2d
  return lambda x, w, s, p: op(x, w, s, p, impl)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _assert_close(got, want, what):
  scale = max(1.0, float(jnp.max(jnp.abs(want))))
  err = float(jnp.max(jnp.abs(got - want))) / scale
  assert err < 2e-5, f"{what}: max error {err:.2e} (relative to {scale:.3g})"


def _vjps(f, x, w, cotangent):
  y, vjp = jax.vjp(f, x, w)
  return (y, *vjp(cotangent))


def _check_all(kind, impl, x, w, cases):
  """Output, input- and kernel-VJPs of ``impl`` equal lax's for every ``(strides, padding)``.

  All cases are compiled as one function (one compile instead of dozens).
  """
  ref, ours = _reference(kind), _ours(kind, impl)
  shapes = [jax.eval_shape(lambda a, b, c=c: ref(a, b, *c), x, w).shape for c in cases]
  cotangents = [_random(shape, 7) for shape in shapes]

  @jax.jit
  def run(x, w, cotangents):
    out = []
    for (strides, padding), ct in zip(cases, cotangents, strict=True):
      want = _vjps(lambda a, b, s=strides, p=padding: ref(a, b, s, p), x, w, ct)
      got = _vjps(lambda a, b, s=strides, p=padding: ours(a, b, s, p), x, w, ct)
      out.append((got, want))
    return out

  for (strides, padding), (got, want) in zip(cases, run(x, w, cotangents), strict=True):
    what = f"{kind} {impl} x{x.shape} w{w.shape} s{strides} {padding}"
    for g, r, name in zip(got, want, ("y", "dx", "dw"), strict=True):
      assert g.shape == r.shape, f"{what} {name}"
      _assert_close(g, r, f"{what} {name}")


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_values_and_gradients_equal_lax(kind, impl, k):
  # Stride 1 with 3 → 4 channels is lax's own conv in every implementation (with ≥ 16: the
  # stride-one gemm test below); stride 2 is the work.
  cases = [((2, 2), p) for p in PADDINGS] + [((1, 1), "SAME")]
  _check_all(kind, impl, _random((2, 7, 8, 3), 0), _random((k, k, 3, 4), 1), cases)


@settings(max_examples=8, deadline=None)
@given(
  kind=st.sampled_from(["conv", "conv_transpose"]),
  impl=st.sampled_from(FAST),
  kh=st.integers(1, 6),
  kw=st.integers(1, 6),
  sh=st.integers(1, 3),
  sw=st.integers(2, 3),
  h=st.integers(6, 11),
  w=st.integers(6, 11),
  pads=st.sampled_from(["SAME", "VALID", ((0, 3), (2, 0)), ((1, 1), (3, 2))]),
)
def test_random_shapes_equal_lax(kind, impl, kh, kw, sh, sw, h, w, pads):
  """Non-square kernels and strides, sizes not divisible by the stride, uneven pads."""
  x, kernel = _random((1, h, w, 2), 2), _random((kh, kw, 2, 3), 3)
  _check_all(kind, impl, x, kernel, [((sh, sw), pads)])


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
@pytest.mark.parametrize("k, padding", [(5, "SAME"), (4, "SAME"), (2, "SAME"), (3, "VALID")])
def test_second_derivatives_equal_lax(kind, impl, k, padding):
  """∂/∂w ‖∇_x Σ sin f(x, w)‖²: the gradient penalty's double backward."""

  def penalty_grad(f):
    def penalty(w, x):
      gx = jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w, (2, 2), padding))))(x)
      return jnp.sum(jnp.square(gx))

    return jax.jit(jax.grad(penalty, argnums=(0, 1)))

  x, w = _random((2, 8, 9, 3), 4), 0.3 * _random((k, k, 3, 4), 5)
  got = penalty_grad(_ours(kind, impl))(w, x)
  want = penalty_grad(_reference(kind))(w, x)
  for g, r in zip(got, want, strict=True):
    _assert_close(g, r, f"{kind} {impl} k{k} second derivative")


@pytest.mark.parametrize(
  "k, padding", [(3, "SAME"), (3, "VALID"), (2, ((1, 0), (2, 1))), (1, "SAME"), (1, 1)]
)
def test_stride_one_gemm_equals_lax_to_second_order(k, padding):
  """``gemm`` at stride 1 with ≥ 16 channels both sides (ResNet, RealNVP s/t nets): a 1×1 conv
  is one matrix product, others XLA's conv with the kernel-gradient as one product per tap.
  Values, both VJPs and the gradient penalty's double backward equal lax's."""
  x, w = _random((2, 7, 6, 16), 0), 0.2 * _random((k, k, 16, 24), 1)
  _check_all("conv", "gemm", x, w, [((1, 1), padding)])
  ref, ours = _reference("conv"), _ours("conv", "gemm")

  def penalty_grad(f):
    def penalty(w, x):
      gx = jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w, (1, 1), padding))))(x)
      return jnp.sum(jnp.square(gx))

    return jax.jit(jax.grad(penalty, argnums=(0, 1)))

  for g, r in zip(penalty_grad(ours)(w, x), penalty_grad(ref)(w, x), strict=True):
    _assert_close(g, r, f"stride-1 gemm k{k} {padding} second derivative")
  grad = jax.jit(jax.grad(lambda w: jnp.sum(ours(x, w, (1, 1), padding) ** 2)))
  text = grad.lower(w).as_text()
  if k == 1 and padding != 1:  # No convolution at all.
    assert text.count("stablehlo.convolution") == 0
  else:  # XLA's forward and input-gradient; the kernel-gradient: k² matrix products.
    assert text.count("stablehlo.convolution") == 1
    assert text.count("stablehlo.dot_general") == k * k


def _nontrivial_lhs_dilations(text: str) -> int:
  """Convolutions with input dilation in a lowered StableHLO text."""
  found = re.findall(r"lhs_dilate = \[([^\]]*)\]", text)
  return sum(1 for d in found if {v.strip() for v in d.split(",")} != {"1"})


@pytest.mark.parametrize("impl", ["xla", *FAST])
def test_no_input_dilation_in_any_derivative(impl):
  """Forward, backward and double backward of a strided conv and a transposed conv."""

  def penalty(w1, w2, x):
    def f(x):
      y = conv2d(x, w1, (2, 2), "SAME", impl)
      return jnp.sum(jnp.square(conv_transpose2d(y, w2, (2, 2), "SAME", impl)))

    return jnp.sum(jnp.square(jax.grad(f)(x)))

  args = (_random((5, 5, 3, 4), 0), _random((5, 5, 4, 3), 1), _random((2, 8, 8, 3), 2))
  text = jax.jit(jax.grad(penalty, argnums=(0, 1))).lower(*args).as_text()
  if impl == "gemm":  # Matrix products only: 2 forward, 4 backward, more in the double backward.
    assert text.count("stablehlo.convolution") == 0
    assert text.count("stablehlo.dot_general") >= 6
    return
  assert text.count("stablehlo.convolution") >= 6
  if impl == "xla":  # The check can fail: XLA's own formulation dilates inputs.
    assert _nontrivial_lhs_dilations(text) > 0
  else:
    assert _nontrivial_lhs_dilations(text) == 0


class _Pair(nn.Module):
  """A strided conv and a transposed conv, from flax or from gen_models.nn."""

  ours: bool
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    if self.ours:
      conv = lambda *a, **k: gnn.Conv(*a, impl=self.impl, **k)
      up = lambda *a, **k: gnn.ConvTranspose(*a, impl=self.impl, **k)
    else:
      conv, up = nn.Conv, nn.ConvTranspose
    x = conv(8, (5, 5), strides=(2, 2), padding="SAME")(x)
    x = up(6, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(nn.relu(x))
    return conv(2, (3, 3), padding="VALID")(x)


@pytest.fixture(scope="module")
def pair_variables():
  """``(flax's variables, ours)`` of :class:`_Pair`, initialised from the same key (eagerly:
  compiling flax's truncated-normal initialiser costs more than running it)."""
  x = _random((2, 16, 16, 3), 0)
  return (
    x,
    _Pair(ours=False).init(jax.random.key(3), x),
    _Pair(ours=True).init(jax.random.key(3), x),
  )


def test_modules_have_flax_parameters(pair_variables):
  """Same names, shapes and initial values: checkpoints and parameter counts do not change."""
  _, flax_vars, our_vars = pair_variables
  assert jax.tree.structure(our_vars) == jax.tree.structure(flax_vars)
  jax.tree.map(np.testing.assert_array_equal, our_vars, flax_vars)
  assert set(our_vars["params"]) == {"Conv_0", "ConvTranspose_0", "Conv_1"}
  assert "bias" not in our_vars["params"]["ConvTranspose_0"]


@pytest.mark.parametrize("impl", ["auto", "xla", *FAST])
def test_modules_compute_flax_outputs(pair_variables, impl):
  x, flax_vars, _ = pair_variables
  want = jax.jit(_Pair(ours=False).apply)(flax_vars, x)
  got = jax.jit(_Pair(ours=True, impl=impl).apply)(flax_vars, x)
  _assert_close(got, want, impl)


def test_auto_picks_per_backend_and_layer():
  assert gnn.resolve_impl("auto") == "phases"  # The tests run on CPU.
  assert gnn.resolve_impl("auto", "cpu") == "phases"
  # On CPU, XLA's own kernel for transposed convs with few output channels (measured fastest).
  assert gnn.resolve_impl("auto", "cpu", transpose=True, out_channels=4) == "xla"
  assert gnn.resolve_impl("auto", "cpu", transpose=True, out_channels=5) == "phases"
  assert gnn.resolve_impl("auto", "cpu", out_channels=1) == "phases"  # A strided conv.
  assert gnn.resolve_impl("auto", "gpu", transpose=True, out_channels=1) == "subpixel"
  assert gnn.resolve_impl("auto", "gpu") == "subpixel"  # Measured on an H200: BENCHMARKS.md.
  assert gnn.resolve_impl("auto", "tpu") == "xla"
  # On CPU "gemm" where the kernel is a multiple of the stride and channels are ≥ 16 both
  # sides, or where the (adjoint) strided conv's input has 1–3 channels (patches).
  vae_middle = {"kernel_size": (4, 4), "strides": (2, 2), "in_channels": 32, "out_channels": 32}
  assert gnn.resolve_impl("auto", "cpu", **vae_middle) == "gemm"
  assert gnn.resolve_impl("auto", "cpu", transpose=True, **vae_middle) == "gemm"
  assert gnn.resolve_impl("auto", "gpu", **vae_middle) == "subpixel"
  assert gnn.resolve_impl("auto", "cpu", **{**vae_middle, "in_channels": 1}) == "gemm"
  assert gnn.resolve_impl("auto", "cpu", **{**vae_middle, "in_channels": 8}) == "phases"
  assert gnn.resolve_impl("auto", "cpu", transpose=True, **{**vae_middle, "out_channels": 1}) == (
    "gemm"
  )
  dcgan = {**vae_middle, "kernel_size": (5, 5), "in_channels": 64, "out_channels": 128}
  assert gnn.resolve_impl("auto", "cpu", **dcgan) == "phases"  # 5×5 would pad to 6×6 taps.
  assert gnn.resolve_impl("auto", "cpu", **{**dcgan, "in_channels": 3}) == "phases"
  last = {**dcgan, "in_channels": 64, "out_channels": 3}
  assert gnn.resolve_impl("auto", "cpu", transpose=True, **last) == "xla"


@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
@pytest.mark.parametrize("k", [2, 4, 5])
def test_gemm_both_forms_equal_lax(kind, k):
  """``gemm``'s other form in each direction: 8 channels in, 3 out (shifted sums for a conv,
  patches for a transposed conv's adjoint); the tests above have 3 in, 4 out (the reverse)."""
  cases = [((2, 2), p) for p in PADDINGS]
  _check_all(kind, "gemm", _random((2, 7, 8, 8), 0), _random((k, k, 8, 3), 1), cases)


def test_bad_arguments_are_clear_errors():
  x, w = _random((1, 8, 8, 3), 0), _random((3, 3, 3, 4), 1)
  with pytest.raises(UserError, match="unknown conv_impl 'fast'"):
    gnn.check_impl("fast")
  with pytest.raises(ValueError, match="unknown conv implementation"):
    conv2d(x, w, (2, 2), "SAME", "fast")
  with pytest.raises(ValueError, match="padding 'CIRCULAR' is not supported"):
    conv2d(x, w, (2, 2), "CIRCULAR")
  with pytest.raises(ValueError, match="strides must be a positive int"):
    conv_transpose2d(x, w, (0, 2))
  with pytest.raises(ValueError, match=r"expected x \(B, H, W, C\)"):
    conv2d(x[0], w)
  with pytest.raises(ValueError, match=r"expected x \(B, H, W, C\)"):
    conv2d(x, _random((3, 3, 5, 4), 1))
  with pytest.raises(ValueError, match="output would be empty"):
    conv2d(x, _random((9, 9, 3, 4), 1), (2, 2), "VALID", "space_to_depth")
  with pytest.raises(TypeError):
    gnn.Conv(4, (3, 3), kernel_dilation=2)  # flax's other options do not exist here.


def test_weight_norm_conv_is_g_times_v_over_its_norm():
  """``WeightNormConv`` computes ``conv(x, w) + b`` with ``w[..., o] = g_o v[..., o] / ‖v[..., o]‖``
  (norm over kh, kw, C_in; written out here in numpy), so ``‖w[..., o]‖ = |g_o|``; without the
  scale the kernels have unit norm; the initial ``g`` is the reference's ``a·√(C_in·kh·kw/12)``
  with ``v ~ U(−a, a)``, ``a = √(2/C_in)``; ``zero_scale`` starts the output at the bias (0)."""
  from gen_models.nn import WeightNormConv, weight_norm_kernel

  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  layer = WeightNormConv(4, (3, 3), impl="xla")
  params = layer.init(jax.random.key(1), x)["params"]
  a = np.sqrt(2 / 3)
  assert np.all(np.abs(params["v"]) <= a)
  np.testing.assert_allclose(params["g"], a * np.sqrt(3 * 9 / 12), rtol=1e-6)
  rng = np.random.default_rng(0)
  params = {
    "v": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
    "g": rng.normal(size=(4,)).astype(np.float32),
    "bias": rng.normal(size=(4,)).astype(np.float32),
  }
  v = params["v"].astype(np.float64)
  w = params["g"] * v / np.sqrt(np.sum(v**2, axis=(0, 1, 2)))
  np.testing.assert_allclose(np.sqrt(np.sum(w**2, axis=(0, 1, 2))), np.abs(params["g"]), rtol=1e-6)
  np.testing.assert_allclose(weight_norm_kernel(params["v"], params["g"]), w, rtol=1e-5)
  want = jax.lax.conv_general_dilated(
    x, jnp.asarray(w, jnp.float32), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(
    layer.apply({"params": params}, x), want + params["bias"], rtol=1e-5, atol=1e-5
  )
  unit = weight_norm_kernel(params["v"], None)
  np.testing.assert_allclose(np.sqrt(np.sum(np.square(unit), axis=(0, 1, 2))), 1.0, rtol=1e-6)
  zero = WeightNormConv(4, (1, 1), zero_scale=True, impl="xla")
  np.testing.assert_array_equal(zero.apply(zero.init(jax.random.key(2), x), x), 0.0)
