"""RealNVP: invertibility, exact log-determinants, normalised densities, closed forms, errors.

Invertibility and log-det tests run in float64 (``jax.enable_x64``, parameters cast): with random
parameters a whole flow's Jacobian has condition numbers up to ~1e9 (measured), where a float32
``slogdet`` is off by up to 0.3 nats while float64 agrees to 1e-12. In float64 the only error
is round-off: we ask 1e-9. The density tests run in float32, the dtype of training, with
tolerances stated where they are used. The bfloat16 tests (``flow.compute_dtype``, at the end)
put bfloat16 s/t nets into float64 flows for the exactness checks, and compare float32 flows
with and without them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fast_jit
from flax import traverse_util

from gen_models.errors import UserError
from gen_models.models import realnvp as r

LOGDET_TOL = dict(rtol=1e-9, atol=1e-9)


def _perturb(tree, key, scale=0.3):
  """Every leaf plus N(0, scale²) noise: random parameters (the zero-initialised last layers
  would otherwise make every coupling the identity)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  return jax.tree.unflatten(treedef, noisy)


def _random_variables(module, x, seed=0, stats_from=None):
  """Random params; batch norm running statistics from ``stats_from`` (a train-mode pass with
  momentum 0 stores the batch's statistics) or random positive variances."""
  variables = fast_jit(module.init)(jax.random.key(seed), x)
  variables = {**variables, "params": _perturb(variables["params"], jax.random.key(seed + 1))}
  variables = jax.tree.map(lambda v: jnp.asarray(v, x.dtype), variables)
  if "batch_stats" in variables:
    flat = traverse_util.flatten_dict(variables["batch_stats"])
    rng = np.random.default_rng(seed)
    for k, v in flat.items():
      flat[k] = (
        jnp.asarray(rng.uniform(0.5, 2.0, v.shape), x.dtype)
        if k[-1] == "var"
        else jnp.asarray(rng.normal(0, 0.3, v.shape), x.dtype)
      )
    variables["batch_stats"] = traverse_util.unflatten_dict(flat)
  return variables


def _jacobian_log_dets(fn, x):
  """``log|det ∂fn(x_i)/∂x_i|`` of each example by ``slogdet(jacfwd)``: ``(B,)`` (traceable)."""

  def one(xi):
    jac = jax.jacfwd(lambda v: fn(v[None])[0].reshape(-1))(xi)
    return jnp.linalg.slogdet(jac.reshape(jac.shape[0], -1))[1]

  return jax.vmap(one)(x)


VECTOR = dict(shape=(4,), num_couplings=3, hidden=(8,))
IMAGE = dict(shape=(4, 4, 2), num_scales=2, features=4, blocks=1, impl="xla")
SMALL_IMAGE = dict(shape=(4, 4, 1), num_scales=2, features=2, blocks=0, impl="xla")

# Every option of the reference code on: weight norm, batch norm and skip convs in the s/t net, a
# 1×1 output conv, the [relu(h), relu(−h), b] input, (x + t)·exp(s), batch norm of the
# transformed half.
REF = r.Coupling(
  weight_norm=True,
  batch_norm=True,
  skip=True,
  out_kernel=1,
  input="concat_relu",
  shift_first=True,
  out_norm=True,
)

LAYERS = [
  ("vector", (4,), lambda: r.AffineCoupling("vector", 0, hidden=(8,))),
  ("vector_odd", (5,), lambda: r.AffineCoupling("vector", 1, hidden=(8,))),
  (
    "checkerboard",
    (4, 4, 2),
    lambda: r.AffineCoupling("checkerboard", 1, features=4, blocks=1, impl="xla"),
  ),
  ("channel", (2, 2, 4), lambda: r.AffineCoupling("channel", 0, features=4, blocks=1, impl="xla")),
  (
    "channel_odd",
    (2, 2, 4),
    lambda: r.AffineCoupling("channel", 1, features=4, blocks=1, impl="xla"),
  ),
  (
    "checkerboard_reference",
    (4, 4, 2),
    lambda: r.AffineCoupling("checkerboard", 0, features=4, blocks=1, impl="xla", options=REF),
  ),
  (
    "channel_reference",
    (2, 2, 4),
    lambda: r.AffineCoupling("channel", 1, features=4, blocks=1, impl="xla", options=REF),
  ),
  ("batchnorm", (2, 2, 3), lambda: r.BatchNorm(momentum=0.0)),
  ("actnorm", (2, 2, 3), r.ActNorm),
]


@pytest.mark.parametrize(("name", "shape", "make"), LAYERS, ids=[x[0] for x in LAYERS])
def test_layer_inverse_and_log_det(name, shape, make, x64):
  """Eval mode: f⁻¹(f(x)) = x, the inverse's log-det is minus the forward's, and the forward's
  log-det is slogdet of the Jacobian of each example (autodiff)."""
  layer = make()
  x = jax.random.normal(jax.random.key(3), (3, *shape), jnp.float64)
  variables = _random_variables(layer, x)

  @fast_jit  # One compile for all the checks.
  def run(variables, x):
    y, ld = layer.apply(variables, x)
    back, ld_inv = layer.apply(variables, y, inverse=True)
    return ld, back, ld_inv, _jacobian_log_dets(lambda v: layer.apply(variables, v)[0], x)

  ld, back, ld_inv, jac = run(variables, x)
  np.testing.assert_allclose(back, x, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(ld_inv, -ld, **LOGDET_TOL)
  np.testing.assert_allclose(ld, jac, **LOGDET_TOL)
  assert float(jnp.max(jnp.abs(ld))) > 0.1  # Random parameters: not a trivial identity.


def test_batchnorm_train_mode_log_det(x64):
  """Training mode uses the batch statistics: with momentum 0 the running statistics become the
  batch's, and the eval-mode map with them equals the train-mode map, log-det included; that
  log-det is the Jacobian's of each example given the statistics."""
  bn = r.BatchNorm(momentum=0.0)
  x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), (6, 2, 2, 3), jnp.float64)
  variables = _random_variables(bn, x)
  (y, ld), new = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(new["batch_stats"]["mean"], x.mean((0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(new["batch_stats"]["var"], x.var((0, 1, 2)), rtol=1e-12)
  frozen = {**variables, **new}
  y_eval, ld_eval = bn.apply(frozen, x)
  np.testing.assert_allclose(y_eval, y, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ld_eval, ld, rtol=1e-12)
  np.testing.assert_allclose(
    ld, _jacobian_log_dets(lambda v: bn.apply(frozen, v)[0], x), **LOGDET_TOL
  )
  # The formula: P · Σ_c (log γ_c − ½ log(v_c + ε)), with P = 4 pixels.
  want = 4 * jnp.sum(variables["params"]["log_gamma"] - 0.5 * jnp.log(x.var((0, 1, 2)) + 1e-4))
  np.testing.assert_allclose(ld, jnp.full(6, want), rtol=1e-12)


def test_squeeze_is_a_permutation():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  s = r.squeeze(x)
  assert s.shape == (2, 2, 3, 12)
  np.testing.assert_array_equal(r.unsqueeze(s), x)
  np.testing.assert_array_equal(np.sort(np.asarray(s).ravel()), np.asarray(x).ravel())
  # Channel (2i + j)·C + c of patch (h, w) is pixel (2h + i, 2w + j), channel c.
  np.testing.assert_array_equal(s[:, 1, 2, (2 * 1 + 0) * 3 + 2], x[:, 3, 4, 2])


def test_reference_squeeze_and_factor_out_layout():
  """The reference layout: channel ``c·4 + 2i + j`` of patch (h, w) is pixel (2h + i, 2w + j),
  channel c (its ``squeeze_2x2``); after :func:`reorder`, block k of C channels is patch
  position (0,0), (1,1), (0,1), (1,0) for k = 0..3 (its ``squeeze_2x2_ordered``), so the half
  going on to the next scale is a checkerboard of the pixels; both invert exactly."""
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  s = r.squeeze(x, "reference")
  np.testing.assert_array_equal(r.unsqueeze(s, "reference"), x)
  for i, j, c in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 2)]:
    np.testing.assert_array_equal(s[:, 1, 2, c * 4 + 2 * i + j], x[:, 2 + i, 4 + j, c])
  o = r.reorder(s)
  np.testing.assert_array_equal(r.reorder(o, inverse=True), s)
  for k, (i, j) in enumerate([(0, 0), (1, 1), (0, 1), (1, 0)]):
    np.testing.assert_array_equal(o[:, 1, 2, k * 3 : (k + 1) * 3], x[:, 2 + i, 4 + j, :])


FLOWS = [
  ("vector_batchnorm", dict(VECTOR, normalization="batchnorm", bn_momentum=0.0)),
  ("vector_actnorm", dict(VECTOR, normalization="actnorm")),
  ("image_3_scales_none", dict(SMALL_IMAGE, shape=(8, 4, 1), num_scales=3, normalization="none")),
  (
    "image_2_scales_batchnorm",
    dict(SMALL_IMAGE, shape=(4, 4, 2), normalization="batchnorm", bn_momentum=0.0),
  ),
  (  # The reference's squeeze, factor-out and norm (its couplings: LAYERS, *_reference).
    "image_2_scales_reference",
    dict(
      SMALL_IMAGE,
      shape=(4, 4, 2),
      normalization="transformed_batchnorm",
      squeeze_layout="reference",
    ),
  ),
]


@pytest.mark.parametrize(("name", "kw"), FLOWS, ids=[x[0] for x in FLOWS])
def test_whole_flow_inverse_and_log_det(name, kw, x64):
  """The whole flow, random parameters, in eval mode and in train mode (batch statistics):
  f⁻¹(f(x)) = x; log-det = slogdet of the Jacobian x ↦ z; per-layer log-dets sum to it."""
  spec = r.Spec(**kw)
  flow = r.RealNVP(spec)
  x = jax.random.normal(jax.random.key(1), (4, *spec.shape), jnp.float64)
  variables = _random_variables(flow, x)

  @functools.partial(fast_jit, static_argnums=2)
  def run(variables, x, train):
    if train:
      (z, ld, per_layer), new = flow.apply(variables, x, train=True, mutable=["batch_stats"])
      used = {**variables, **new}  # Momentum 0: the running statistics are the batch's.
    else:
      (z, ld, per_layer), used = flow.apply(variables, x), variables
    z_eval, ld_eval, _ = flow.apply(used, x)
    jac = _jacobian_log_dets(lambda v: flow.apply(used, v)[0], x)
    back, ld_inv, _ = flow.apply(used, z, inverse=True)
    return z, ld, sum(per_layer.values()), z_eval, ld_eval, jac, back, ld_inv

  for train in (False, True) if spec.normalization == "batchnorm" else (False,):
    z, ld, summed, z_eval, ld_eval, jac, back, ld_inv = run(variables, x, train)
    assert z.shape == (4, math.prod(spec.shape))
    np.testing.assert_allclose(summed, ld, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z_eval, z, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ld_eval, ld, **LOGDET_TOL)
    np.testing.assert_allclose(ld, jac, **LOGDET_TOL)
    np.testing.assert_allclose(back, x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ld_inv, -ld, **LOGDET_TOL)


def test_parameter_count_by_hand():
  """Vector flow on d = 4, 3 couplings of MLP (8,) → 2·4, batch norm after each:
  per coupling (4+1)·8 + (8+1)·8 + 4 (scale) = 116, per batch norm 2·4 = 8: 3·124 = 372.
  Image flow 4×4×2, 2 scales, ResNet(4 features, 1 block): a checkerboard net has input
  2 + 1 (mask) channels and output 2·2: (9·3+1)·4 + 2·(9·4+1)·4 + (9·4+1)·4 + 2 (scale) = 558;
  a channel net (after squeeze: 8 channels, 4 kept) (9·4+1)·4 + 296 + (9·4+1)·8 + 4 = 744;
  the last scale's checkerboard nets see 4 + 1 channels, output 8:
  (9·5+1)·4 + 296 + (9·4+1)·8 + 4 = 780. Norms: 3 × 2·2 + 3 × 2·8 + 4 × 2·4 = 92.
  Total 3·558 + 3·744 + 4·780 + 92 = 7118."""

  def count(module, shape):
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))

  assert count(r.RealNVP(r.Spec(**VECTOR)), (1, 4)) == 372
  assert count(r.RealNVP(r.Spec(**IMAGE)), (1, 4, 4, 2)) == 7118


@pytest.mark.parametrize(
  ("config", "shape", "want"),
  [("realnvp_cifar10", (32, 32, 3), 19_609_586), ("realnvp_mnist", (32, 32, 1), 19_530_022)],
)
def test_paper_config_parameter_counts_by_hand(config, shape, want):
  """The paper configs (the reference code's s/t nets: weight norm, batch norm, skips; 8 blocks;
  widths 64 at scale 0, doubled at scale 1 and in the channel couplings). One s/t ResNet with
  input C_in, width F, output O, B = 8 blocks has
    first 3×3 conv (v, bias; no g: a batch norm follows)            9·C_in·F + F
    first 1×1 skip (v, g, bias)                                      F² + 2F
    per block: norm (offset) F, 3×3 conv (v only) 9F², norm F,
               3×3 conv (v, g, bias) 9F² + 2F, 1×1 skip F² + 2F     19F² + 6F
    output norm (offset) F; 1×1 output conv (v, g, bias)            F + F·O + 2·O
  so R = 9·C_in·F + F² + 4F + 8·(19F² + 6F) + F·O + 2·O; each coupling adds its input norm
  (offsets of the C kept channels) and its tanh scales (the O/2 transformed channels); the
  transformed-half batch norm has no parameters.
  CIFAR-10: 3 checkerboard couplings on 32×32×3 (C_in = 2·3 + 1 = 7, F = 64, O = 6):
  R = 4032 + 4096 + 256 + 625,664 + 384 + 12 = 634,444, + 3 + 3; 3 channel couplings on
  16×16×12 (C_in = 2·6, F = 128, O = 12): R = 13,824 + 16,384 + 512 + 2,496,512 + 1,536 + 24 =
  2,528,792, + 6 + 6; 4 checkerboard couplings on 16×16×6 (C_in = 13, F = 128, O = 12):
  R = 2,529,944, + 6 + 6. Total 3·634,450 + 3·2,528,804 + 4·2,529,956 = 19,609,586.
  MNIST (28×28×1 after the crop): 3 × (R(3, 64, 2) = 631,876, + 1 + 1), 3 × (R(4, 128, 4) =
  2,518,536, + 2 + 2), 4 × (R(5, 128, 4) = 2,519,688, + 2 + 2): 19,530,022."""
  import importlib

  from gen_models import config as config_lib

  c = config_lib.validate(importlib.import_module(f"experiments.configs.{config}").get_config())
  flow = r.bind(c, shape).flow
  shapes = jax.eval_shape(flow.init, jax.random.key(0), jnp.zeros((1, *flow.spec.shape)))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == want


def test_transformed_half_batch_norm_uses_the_reference_statistics():
  """Train mode, checkerboard coupling with the reference options, against the same coupling
  without the norm (``y₀``, its log-det ``ld₀``): with ``m, v`` the mean and biased variance per
  channel of ``y₀ ⊙ (1 − b)`` over batch and pixels (the kept positions counted as zeros, as the
  reference's ``batch_norm_log_diff(res * (1 − mask))``), ``y = y₀`` at kept positions and
  ``(y₀ − m)/√(v + ε)`` elsewhere, the log-det is ``ld₀ − ½ Σ_transformed log(v + ε)``, and the
  running averages move by ``1 − momentum`` towards ``m, v``."""
  import dataclasses

  layer = r.AffineCoupling("checkerboard", 1, features=4, blocks=0, impl="xla", options=REF)
  plain = layer.clone(options=dataclasses.replace(REF, out_norm=False))
  x = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
  variables = _random_variables(layer, x)
  train = lambda module: fast_jit(
    lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
  )
  (y, ld), new = train(layer)(variables, x)
  (y0, ld0), _ = train(plain)(variables, x)
  mask = np.asarray(r.AffineCoupling.mask((4, 4, 2), "checkerboard", 1))
  yt = np.where(mask, 0.0, np.asarray(y0, np.float64))
  m, v = yt.mean(axis=(0, 1, 2)), yt.var(axis=(0, 1, 2))
  eps = REF.epsilon
  np.testing.assert_allclose(y, np.where(mask, y0, (y0 - m) / np.sqrt(v + eps)), atol=1e-5)
  count = (~mask[..., 0]).sum()  # Transformed positions per channel.
  np.testing.assert_allclose(ld, ld0 - 0.5 * count * np.sum(np.log(v + eps)), rtol=1e-5)
  mu = REF.momentum
  for name, batch in (("mean", m), ("var", v)):
    want = mu * variables["batch_stats"][name] + (1 - mu) * batch
    np.testing.assert_allclose(new["batch_stats"][name], want, rtol=1e-5, atol=1e-6)


def test_l2_on_the_scales_and_global_norm_clipping():
  """``l2_penalty(·, "scales")`` is Σ g² over the weight-norm scales plus Σ scale² of the
  checkerboard couplings (the reference's ``magnitude`` and ``rescaling_scale``), counted here
  by walking the parameter names; clipping is g·c/max(‖g‖, c) with the global norm."""
  spec = r.Spec(**dict(SMALL_IMAGE, normalization="transformed_batchnorm", coupling=REF))
  flow = r.RealNVP(spec)
  # The initial values serve: the g's are the reference's (the last conv's 0), the tanh scales 1
  # (so counting the channel couplings' too would show).
  params = fast_jit(flow.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
  flat = {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(params).items()}
  want = sum(float(np.sum(np.square(v))) for k, v in flat.items() if k[-1] == "g")
  want += sum(
    float(np.sum(np.square(v)))
    for k, v in flat.items()
    if k[-1] == "scale" and k[0].split("_")[1].startswith("checkerboard")
  )
  assert any(k[-1] == "g" for k in flat) and want > 0
  penalty = fast_jit(r.l2_penalty, static_argnums=1)
  np.testing.assert_allclose(penalty(params, "scales"), want, rtol=1e-6)
  kernels = sum(float(np.sum(np.square(v))) for k, v in flat.items() if k[-1] == "kernel")
  np.testing.assert_allclose(penalty(params, "kernels"), kernels, rtol=1e-6)

  grads = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array([[4.0]])}}  # Global norm 5.
  clipped, norm = r.clip_by_global_norm(grads, 2.0)
  assert float(norm) == pytest.approx(5.0)
  np.testing.assert_allclose(clipped["a"], [1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(clipped["b"]["c"], [[1.6]], rtol=1e-6)
  same, _ = r.clip_by_global_norm(grads, 100.0)
  np.testing.assert_array_equal(same["a"], grads["a"])


def test_every_coupling_starts_as_the_identity():
  """At init (zero last layers, no normalisation) z = x exactly and every log-det is 0."""
  spec = r.Spec(**dict(SMALL_IMAGE, normalization="none"))
  flow = r.RealNVP(spec)
  x = jax.random.normal(jax.random.key(0), (2, *spec.shape))
  z, ld, _ = fast_jit(lambda x: flow.apply(flow.init(jax.random.key(1), x), x))(x)
  np.testing.assert_array_equal(ld, 0.0)
  # z is x permuted (squeeze, factor-out order): the same multiset of values per example.
  np.testing.assert_array_equal(np.sort(z, axis=1), np.sort(x.reshape(2, -1), axis=1))


@pytest.fixture(scope="module")
def two_d_flow():
  spec = r.Spec(shape=(2,), num_couplings=4, hidden=(16,), normalization="batchnorm")
  flow = r.RealNVP(spec)
  variables = _random_variables(flow, jnp.zeros((1, 2)), seed=5)
  log_p = fast_jit(
    lambda x: r.log_prob(variables, x, jax.random.key(0), flow=flow, prep=r.Preprocess())[0]
  )
  return flow, variables, log_p


def test_two_d_density_integrates_to_one(two_d_flow):
  """Quadrature of exp(log p) on a 0.05 grid over [−12, 12]² (random parameters) is 1 ± 1e-2."""
  _, _, log_p = two_d_flow
  h = 0.05
  g = np.arange(-12 + h / 2, 12, h, dtype=np.float32)
  xx, yy = np.meshgrid(g, g, indexing="ij")
  total = float(jnp.sum(jnp.exp(log_p(jnp.stack([xx.ravel(), yy.ravel()], 1))))) * h * h
  assert abs(total - 1.0) < 1e-2, total


def test_samples_are_the_inverse_of_log_prob(two_d_flow):
  """sample(z) = f⁻¹(T·z); at temperature 0 every sample is f⁻¹(0), and f maps it back to 0."""
  flow, variables, _ = two_d_flow
  state = _state(flow, variables)
  prep = r.Preprocess()
  draw = fast_jit(
    lambda state, key, t: r.sample(state, key, 5, flow=flow, prep=prep, temperature=t)
  )
  forward = fast_jit(lambda x: flow.apply(variables, x)[0])
  x0 = draw(state, jax.random.key(0), 0.0)
  np.testing.assert_allclose(x0, jnp.broadcast_to(x0[:1], x0.shape))
  np.testing.assert_allclose(forward(x0), 0.0, atol=1e-5)
  x = draw(state, jax.random.key(1), 0.7)
  np.testing.assert_allclose(
    forward(x), 0.7 * jax.random.normal(jax.random.key(1), (5, 2)), atol=1e-4
  )


def _state(flow, variables):
  import optax

  from gen_models.train_state import TrainState

  params = {"flow": variables["params"]}
  model_state = {"flow": {k: v for k, v in variables.items() if k != "params"}}
  return TrainState.create(
    params=params, tx={"flow": optax.adam(1e-3)}, rng=jax.random.key(0), model_state=model_state
  )


def test_affine_flow_of_a_gaussian_has_the_closed_form_density():
  """Couplings whose nets output constants (zero hidden→output kernels, random biases) and eval
  batch norm make f(x) = A x + c with A diagonal; then x ~ N(−A⁻¹c, A⁻¹A⁻ᵀ), whose log-density
  (closed form, float64) log_prob must give."""
  spec = r.Spec(shape=(3,), num_couplings=3, hidden=(8,), normalization="batchnorm")
  flow = r.RealNVP(spec)
  variables = _random_variables(flow, jnp.zeros((1, 3)), seed=2)
  flat = traverse_util.flatten_dict(variables["params"])
  for k in flat:
    if k[-2] == "Dense_1" and k[-1] == "kernel":  # The nets' last layer: output = its bias.
      flat[k] = jnp.zeros_like(flat[k])
  variables = {**variables, "params": traverse_util.unflatten_dict(flat)}
  forward = fast_jit(lambda x: flow.apply(variables, x)[0])
  c = np.asarray(forward(jnp.zeros((1, 3)))[0], np.float64)
  a = (np.asarray(forward(jnp.eye(3)), np.float64) - c).T  # Column i: f(e_i) − f(0) = A e_i.
  assert np.allclose(a, np.diag(np.diag(a)), atol=1e-6) and np.min(np.abs(np.diag(a) - 1)) > 0.05
  a_inv = np.linalg.inv(a.astype(np.float64))
  mean, cov = -a_inv @ c, a_inv @ a_inv.T
  x = np.random.default_rng(0).normal(size=(10, 3))
  diff = x - mean
  want = -0.5 * np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
  want -= 0.5 * np.log(np.linalg.det(2 * np.pi * cov))
  got = fast_jit(
    lambda x: r.log_prob(variables, x, jax.random.key(0), flow=flow, prep=r.Preprocess())[0]
  )(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _log_p1(u, alpha):
  """The identity flow's density of one dimension of ``u``: N(logit y; 0, 1) · (1 − 2α)/(y(1 −
  y)), y = α + (1 − 2α)u (float64)."""
  y = alpha + (1 - 2 * alpha) * u
  logit = np.log(y) - np.log1p(-y)
  return -0.5 * logit**2 - 0.5 * np.log(2 * np.pi) + np.log(1 - 2 * alpha) - np.log(y * (1 - y))


def _identity_flow_pixel_nll(pixels, key, alpha):
  """Each image's −log density of its dequantised pixels on [0, 256)^D under the identity flow,
  ``−Σ_i log p₁(u_i) + D ln 256`` with the noise ``uniform(key)`` that ``flow_input`` draws: the
  closed form, written out here independently of ``realnvp.pixel_nll``. ``(N,)`` float64."""
  noise = np.asarray(jax.random.uniform(key, pixels.shape), np.float64)
  u = (pixels + noise) / 256.0
  n, d = len(pixels), math.prod(pixels.shape[1:])
  return -np.sum(_log_p1(u, alpha).reshape(n, -1), 1) + d * np.log(256)


def test_uniform_noise_images_bits_per_dim_closed_form():
  """Under the identity flow (couplings at init, no normalisation) each dimension of ``u`` has the
  density p₁(u) = N(logit y; 0, 1) · (1 − 2α)/(y(1 − y)), y = α + (1 − 2α)u, so an image's
  bits/dim is (−Σ_i log p₁(u_i) + D ln 256)/(D ln 2) — computed here in float64 from the same
  dequantisation noise; and for uniform-noise pixels the mean bits/dim tends to
  8 − ∫₀¹ log₂ p₁(u) du (one 1-D integral, by Gauss–Legendre on 64 panels of 16 nodes)."""
  alpha = 0.05
  spec = r.Spec(
    shape=(4, 4, 3), num_scales=2, features=2, blocks=0, normalization="none", impl="xla"
  )
  flow = r.RealNVP(spec)
  variables = fast_jit(flow.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  prep = r.Preprocess(image=True, alpha=alpha)
  n, d = 512, 48
  pixels = np.random.default_rng(0).integers(0, 256, size=(n, 4, 4, 3))
  x = jnp.asarray(pixels / 127.5 - 1.0, jnp.float32)
  key = jax.random.key(3)
  log_p = fast_jit(lambda v, x, k: r.log_prob(v, x, k, flow=flow, prep=prep)[0])(variables, x, key)
  bpd = np.asarray(r.bits_per_dim(log_p, d), np.float64)
  want = _identity_flow_pixel_nll(pixels, key, alpha) / (d * np.log(2))
  np.testing.assert_allclose(bpd, want, rtol=2e-6)
  g, w = np.polynomial.legendre.leggauss(16)
  edges = np.linspace(0, 1, 65)
  mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
  integral = np.sum(
    half[:, None] * w[None] * _log_p1(mid[:, None] + half[:, None] * g[None], alpha)
  )
  expected = 8 - integral / np.log(2)
  se = np.std(bpd) / np.sqrt(n)
  assert abs(np.mean(bpd) - expected) < 4 * se, (np.mean(bpd), expected, se)


def test_training_evaluation_and_cli_nll_match_the_closed_form():
  """The three image NLL outputs — the train step's ``nll`` / ``bits_per_dim`` / ``loss``,
  ``evaluate``'s ``nll`` / ``bits_per_dim`` (the headline number) and
  ``experiments.evaluate_likelihood``'s per-example log-densities and summary — each against the
  identity flow's closed form on uniform-noise pixels (float64, the ``D ln 256`` written out in
  the test): removing that term from ``realnvp.pixel_nll``, or computing any of the three
  without it, fails here."""
  from experiments import evaluate_likelihood as el

  alpha, n, d = 0.05, 8, 48
  spec = r.Spec(
    shape=(4, 4, 3), num_scales=1, features=2, blocks=0, normalization="none", impl="xla"
  )
  flow, prep = r.RealNVP(spec), r.Preprocess(image=True, alpha=alpha)
  bound = r.Bound(flow, prep)
  tx = __import__("optax").adam(1e-3)
  state = fast_jit(functools.partial(r.init, flow=flow, tx=tx))(jax.random.key(0))
  pixels = np.random.default_rng(1).integers(0, 256, size=(n, 4, 4, 3))
  x = jnp.asarray(pixels / 127.5 - 1.0, jnp.float32)
  bits = 1 / (d * np.log(2))

  _, metrics = fast_jit(functools.partial(r.train_step, flow=flow, prep=prep, l2=0.0))(
    state, x[None]
  )
  want = np.mean(_identity_flow_pixel_nll(pixels, jax.random.fold_in(state.step_key(), 0), alpha))
  np.testing.assert_allclose(metrics["nll"], want, rtol=2e-6)
  np.testing.assert_allclose(metrics["bits_per_dim"], want * bits, rtol=2e-6)
  np.testing.assert_allclose(metrics["loss"], want, rtol=2e-6)  # Nats per image (l2 = 0).

  rng, chunk = jax.random.key(5), 4
  out = r.evaluate(
    state,
    rng,
    np.asarray(x),
    log_prob_fn=fast_jit(bound.log_prob),
    chunk=chunk,
    num_dims=d,
    image=True,
  )
  want = np.concatenate(
    [
      _identity_flow_pixel_nll(pixels[i : i + chunk], jax.random.fold_in(rng, i), alpha)
      for i in range(0, n, chunk)
    ]
  )
  np.testing.assert_allclose(out["nll"], np.mean(want), rtol=2e-6)
  np.testing.assert_allclose(out["bits_per_dim"], np.mean(want) * bits, rtol=2e-6)

  log_p = el.log_likelihoods(bound, state, np.asarray(x), draws=2, batch_size=4, seed=7)
  key = jax.random.key(7)
  per_draw = [
    np.concatenate(
      [
        _identity_flow_pixel_nll(
          pixels[s : s + 4], jax.random.fold_in(jax.random.fold_in(key, k), i), alpha
        )
        for i, s in enumerate(range(0, n, 4))
      ]
    )
    for k in range(2)
  ]
  want = np.mean(per_draw, axis=0)
  np.testing.assert_allclose(-log_p, want, rtol=2e-6)
  results = el.summary(log_p, d)
  np.testing.assert_allclose(results["nll_nats"], np.mean(want), rtol=2e-6)
  np.testing.assert_allclose(results["bits_per_dim"], np.mean(want) * bits, rtol=2e-6)


def test_logit_transform_round_trip_and_log_det(x64):
  u = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 5)), jnp.float64)
  logits, ld = r.logit_transform(u, 0.05)
  np.testing.assert_allclose(r.inverse_logit_transform(logits, 0.05), u, atol=1e-12)
  jac = _jacobian_log_dets(lambda v: r.logit_transform(v, 0.05)[0], u)
  np.testing.assert_allclose(ld, jac, **LOGDET_TOL)


def test_actnorm_data_init_standardises_the_first_batch():
  """After data_init each ActNorm's output on the init batch has per-channel mean 0, std 1; the
  last layer is an ActNorm, so z itself is standardised."""
  spec = r.Spec(**dict(VECTOR, normalization="actnorm"))
  flow = r.RealNVP(spec)
  state = r.init(jax.random.key(0), flow=flow, tx=__import__("optax").adam(1e-3))
  state = state.replace(
    params={"flow": _perturb(state.params["flow"], jax.random.key(4))}  # Non-trivial couplings.
  )
  batch = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (64, 4))
  new = r.data_init(state, batch, flow=flow, prep=r.Preprocess())
  z, _, _ = flow.apply({"params": new.params["flow"]}, batch)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-4)
  # Only ActNorm parameters changed.
  old, upd = (
    traverse_util.flatten_dict(state.params["flow"]),
    traverse_util.flatten_dict(new.params["flow"]),
  )
  changed = {k for k in old if not np.array_equal(old[k], upd[k])}
  assert changed and all("norm" in k[0] for k in changed)


def test_non_finite_log_det_names_the_layer():
  spec = r.Spec(**dict(VECTOR, normalization="batchnorm"))
  flow = r.RealNVP(spec)
  variables = _random_variables(flow, jnp.zeros((1, 4)))
  stats = traverse_util.flatten_dict(variables["batch_stats"])
  stats[("coupling1_norm", "var")] = jnp.full((4,), -1e-4)  # log(v + ε) = log 0.
  variables = {**variables, "batch_stats": traverse_util.unflatten_dict(stats)}
  per_layer = flow.apply(variables, jnp.ones((2, 4)))[2]
  with pytest.raises(
    UserError, match=r"^non-finite log-determinant in flow layer 'coupling1_norm'$"
  ):
    r.check_finite_log_dets(per_layer)


@pytest.mark.parametrize(
  ("shape", "crop", "scales", "fragment"),
  [
    ((30, 30, 3), 0, 3, "image size 30×30 cannot be split by the squeeze of 3 scales"),
    ((32, 32, 1), 2, 4, "image size 28×28 cannot be split"),
    ((8, 8, 3), 4, 2, "flow.crop=4 leaves no pixels"),
    ((5, 2), 0, 2, "points (d,) or images (H, W, C)"),
  ],
)
def test_shape_errors_are_one_line(shape, crop, scales, fragment):
  with pytest.raises(UserError) as e:
    r.flow_shape(shape, crop, scales)
  assert fragment in str(e.value) and "\n" not in str(e.value)
  assert r.flow_shape((32, 32, 1), 2, 3) == (28, 28, 1)


# ----------------------------------------------------------------------------------------------
# bfloat16 s/t nets (flow.compute_dtype): the likelihood's arithmetic stays float32 (float64
# under x64), and its formula stays exact for the bfloat16 model.

BF16 = jnp.dtype(jnp.bfloat16)


@pytest.mark.parametrize(
  ("name", "shape", "make"),
  [x for x in LAYERS if x[0] in ("vector", "checkerboard_reference", "channel_reference")],
  ids=["vector", "checkerboard_reference", "channel_reference"],
)
def test_bfloat16_coupling_log_det_is_exact(name, shape, make, x64):
  """A coupling whose s/t net computes in bfloat16, everything else in float64: its log-det
  ``Σ (1 − b) s`` is still exactly ``slogdet`` of the Jacobian of its own forward (1e-9, as the
  float64 tests above: the Jacobian is triangular whatever s(b ⊙ x) is), and the inverse
  recomputes s and t from the same kept values, so it inverts to float64 round-off too."""
  layer = make().clone(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(3), (3, *shape), jnp.float64)
  variables = _random_variables(layer, x)

  @fast_jit
  def run(variables, x):
    (y, ld), inter = layer.apply(variables, x, capture_intermediates=True)
    back, ld_inv = layer.apply(variables, y, inverse=True)
    jac = _jacobian_log_dets(lambda v: layer.apply(variables, v)[0], x)
    return y, ld, back, ld_inv, jac, inter["intermediates"]["net"]["__call__"][0]

  y, ld, back, ld_inv, jac, net_out = run(variables, x)
  assert net_out.dtype == BF16 and y.dtype == ld.dtype == jnp.float64
  np.testing.assert_allclose(ld, jac, **LOGDET_TOL)
  np.testing.assert_allclose(back, x, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(ld_inv, -ld, **LOGDET_TOL)
  assert float(jnp.max(jnp.abs(ld))) > 0.1


def test_bfloat16_whole_flow_log_det_is_exact(x64):
  """The whole reference image flow (2 scales, transformed-half batch norm) with bfloat16 s/t
  nets, the rest in float64: f⁻¹(f(x)) = x and the inverse's log-det is minus the forward's
  (1e-8, 1e-9), and the log-det is slogdet of the Jacobian x ↦ z to a relative 1e-4. Not 1e-9
  as for one coupling above: ``jacfwd`` rounds each tangent to bfloat16 where it enters a net, so
  the whole flow's autodiff Jacobian is the product of the layers' only up to perturbations of
  relative size u = 2⁻⁸ in the nets' (off-diagonal) contributions, which do move the determinant
  of a product (measured 1.2e-5 relative). A log-det summed in bfloat16 would be off by ~u
  (4e-3 relative), 40× the tolerance."""
  spec = r.Spec(
    **dict(
      SMALL_IMAGE,
      shape=(4, 4, 2),
      normalization="transformed_batchnorm",
      squeeze_layout="reference",
      coupling=REF,
      compute_dtype="bfloat16",
    )
  )
  flow = r.RealNVP(spec)
  x = jax.random.normal(jax.random.key(1), (3, *spec.shape), jnp.float64)
  variables = _random_variables(flow, x)

  @fast_jit
  def run(variables, x):
    z, ld, _ = flow.apply(variables, x)
    back, ld_inv, _ = flow.apply(variables, z, inverse=True)
    return ld, back, ld_inv, _jacobian_log_dets(lambda v: flow.apply(variables, v)[0], x)

  ld, back, ld_inv, jac = run(variables, x)
  np.testing.assert_allclose(back, x, rtol=1e-8, atol=1e-8)
  np.testing.assert_allclose(ld_inv, -ld, **LOGDET_TOL)
  np.testing.assert_allclose(ld, jac, rtol=1e-4)
  assert float(jnp.max(jnp.abs(ld))) > 0.1


def _paper_flow(compute_dtype: str, shape=(8, 8, 3)):
  """The ``realnvp_cifar10:smoke`` flow (every reference option on, s/t nets of 4 features, no
  blocks) on small images, with the given compute dtype."""
  import importlib

  from gen_models import config as config_lib

  arg = "smoke,bfloat16" if compute_dtype == "bfloat16" else "smoke"
  c = importlib.import_module("experiments.configs.realnvp_cifar10").get_config(arg)
  c.conv_impl = "xla"
  c = config_lib.validate(c)
  return c, r.bind(c, shape)


@pytest.fixture(scope="module")
def paper_flows():
  """``(f32 bound, bf16 bound, variables, pixels x (8, 8, 8, 3) in [−1, 1])``: random parameters
  (float32) and batch statistics shared by both."""
  _, f32 = _paper_flow("float32")
  _, bf16 = _paper_flow("bfloat16")
  assert bf16.flow.spec.compute_dtype == "bfloat16" and f32.flow.spec.compute_dtype == "float32"
  variables = _random_variables(f32.flow, jnp.zeros((1, 8, 8, 3)), seed=11)
  pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3))
  return f32, bf16, variables, jnp.asarray(pixels / 127.5 - 1.0, jnp.float32)


def test_bfloat16_log_likelihood_is_close_to_float32(paper_flows):
  """Same float32 parameters, evaluation mode: the bits/dim of each image with bfloat16 s/t nets
  is within a relative 2e-3 of float32's, and not equal to it (the nets do compute in
  bfloat16). Tolerance: bfloat16 keeps 8 significant bits (unit round-off u = 2⁻⁸ ≈ 3.9e-3),
  so s and t, out of a few bfloat16 layers, are each off by about u relative; log p adds D such
  terms (the log-dets Σ s, and through z the prior), whose errors have both signs, so its
  relative error is well below u: measured at most 6.6e-4 here (7e-3 of ~10 bits/dim: the random
  parameters give large s and t); allowed u/2 ≈ 2e-3."""
  f32, bf16, variables, x = paper_flows
  key = jax.random.key(2)

  @fast_jit
  def run(variables, x):
    out = {}
    for name, b in (("f32", f32), ("bf16", bf16)):
      log_p, _, per_layer = r.log_prob(variables, x, key, flow=b.flow, prep=b.prep)
      out[name] = (log_p, per_layer)
    return out

  out = run(variables, x)
  d = 8 * 8 * 3
  bpd = {k: np.asarray(r.bits_per_dim(v[0], d), np.float64) for k, v in out.items()}
  assert out["bf16"][0].dtype == jnp.float32
  assert np.all(bpd["bf16"] != bpd["f32"])
  np.testing.assert_allclose(bpd["bf16"], bpd["f32"], rtol=2e-3)


def test_bfloat16_flow_dtypes_and_inverse(paper_flows):
  """Float32 intermediates around the bfloat16 nets: each s/t net's output is bfloat16; every
  coupling's and normalisation's output and log-det, z, log p and the train-mode batch
  statistics are float32. The inverse of the bfloat16 flow inverts its forward to float32
  round-off (1e-5 in flow space, |h| < 3; measured 1.9e-6: s and t are recomputed from the same
  kept values)."""
  _, bf16, variables, x = paper_flows
  flow, prep = bf16.flow, bf16.prep
  h, _ = r.flow_input(x, jax.random.key(0), prep)

  @fast_jit
  def run(variables, h):
    (z, ld, per_layer), inter = flow.apply(variables, h, capture_intermediates=True)
    back, ld_inv, _ = flow.apply(variables, z, inverse=True)
    _, stats = flow.apply(variables, h, train=True, mutable=["batch_stats"])
    return z, ld, per_layer, inter["intermediates"], back, ld_inv, stats

  z, ld, per_layer, inter, back, ld_inv, stats = run(variables, h)
  flat = traverse_util.flatten_dict(inter)  # Every module's output, the nets' layers too.
  nets = [v for k, v in flat.items() if "net" in k]
  layers = [v for k, v in flat.items() if "net" not in k]
  assert sum(k[-2:] == ("net", "__call__") for k in flat) == 10  # 3 + 3 + 4 couplings.
  assert {a.dtype for v in nets for a in jax.tree.leaves(v)} == {BF16}
  f32 = {jnp.dtype(jnp.float32)}
  assert {a.dtype for v in layers for a in jax.tree.leaves(v)} == f32
  assert {a.dtype for a in jax.tree.leaves((z, ld, per_layer, back, ld_inv, stats))} == f32
  np.testing.assert_allclose(back, h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld_inv, -ld, rtol=1e-5)


def test_bfloat16_train_step_is_finite_and_close_to_float32():
  """One train step of ``realnvp_cifar10:bfloat16,smoke`` on 8×8 images against float32's:
  finite metrics; bits/dim within 2e-3 and the loss (nats per image) within as much, 2e-3·D ln 2
  (it starts from the identity couplings, whose zero output layers bfloat16 computes exactly);
  the gradient norm within 1 % (a few u, the
  backward pass runs through the bfloat16 nets; measured 2e-4); as Adam's first update is
  ``−lr·g/(|g| + ε) ≈ −lr·sign(g)``, at least 95 % of the parameters move the same way as in
  float32 (measured 99.5 %); parameters, Adam's moments and batch statistics stay float32."""
  from gen_models import models

  x = jnp.asarray(
    np.random.default_rng(1).integers(0, 256, (1, 8, 8, 8, 3)) / 127.5 - 1.0, jnp.float32
  )
  out = {}
  for dtype in ("float32", "bfloat16"):
    config, _ = _paper_flow(dtype)
    family = models.make_family(config, (8, 8, 3))
    state = fast_jit(family.init)(jax.random.key(0))
    new, metrics = fast_jit(family.train_step)(state, x)
    out[dtype] = state, new, jax.device_get(metrics)
  old, new, m = out["bfloat16"]
  _, new32, m32 = out["float32"]
  assert all(np.isfinite(v) for v in m.values()), m
  assert abs(m["bits_per_dim"] - m32["bits_per_dim"]) < 2e-3
  assert abs(m["loss"] - m32["loss"]) < 2e-3 * 8 * 8 * 3 * np.log(2)
  assert m["grad_norm"] == pytest.approx(m32["grad_norm"], rel=0.01)
  step = lambda a, b: np.sign(np.asarray(b) - np.asarray(a)).ravel()
  leaves = (jax.tree.leaves(s.params) for s in (old, new32, new))
  same = np.concatenate([step(o, a) == step(o, b) for o, a, b in zip(*leaves, strict=True)])
  assert same.mean() > 0.95, same.mean()
  trees = (new.params, new.opt_state, new.model_state)
  assert {a.dtype for a in jax.tree.leaves(trees) if jnp.issubdtype(a.dtype, jnp.floating)} == {
    jnp.dtype(jnp.float32)
  }


def test_unknown_compute_dtype_is_a_one_line_error():
  config, _ = _paper_flow("float32")
  config.flow.compute_dtype = "float16"
  with pytest.raises(UserError) as e:
    r.bind(config, (8, 8, 3))
  assert str(e.value) == "unknown flow.compute_dtype 'float16'; known: float32, bfloat16"
