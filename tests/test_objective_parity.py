"""Objective parity: each paper config's train step follows the gradient of its reference's loss.

For every paper config, the reference's loss is written here again from the reference code's
formula (in ``jnp``, not through our loss helpers), on a tiny instance of the same architecture
with the same parameters, batch and noise, and the gradient our train step applies is compared
with the gradient of that loss. The seam: the step's optimizer is replaced by plain SGD with a
unit step (``optax.sgd(1.0)``), so ``params − new_params`` is exactly the (clipped) gradient the
step computed. Float64 (``jax.enable_x64``), so that agreement is to round-off and a constant off
by 2× (even the L2 weight 5e-5) shows.

References (read for their formulas): tensorflow/models ``research/real_nvp/
real_nvp_multiscale_dataset.py`` (RealNVP's ``cost + l2_coeff · l2_reg``, ``clip_by_global_norm``).
"""

from __future__ import annotations

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from experiments.configs import realnvp_cifar10, realnvp_mnist, realnvp_toy
from gen_models.models import realnvp

TIGHT = dict(rtol=1e-9, atol=1e-11)
# Each function here is compiled once or twice: without XLA's backend optimisation that is many
# times faster, and it computes the same function.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _perturbed(tree, seed: int, scale: float = 0.3):
  """Every leaf plus N(0, scale²) noise (the zero-initialised output layers would otherwise
  leave most of the gradient zero); float64."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = [
    jnp.asarray(v, jnp.float64) + scale * jax.random.normal(k, v.shape, jnp.float64)
    for v, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, out)


def _sgd_gradient(step, state, batch, **kwargs):
  """``(gradient the step applied, metrics)``: ``state.tx`` is SGD, the learning rate 1."""
  new, metrics = fast_jit(lambda s, b: step(s, b, learning_rate=1.0, **kwargs))(state, batch)
  grad = jax.tree.map(lambda a, b: a - b, state.params["flow"], new.params["flow"])
  return grad, metrics


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------------------------
# RealNVP (tensorflow/models research/real_nvp).

# The reference's hyperparameters (get_default_hparams and the logit transform's constant).
REF_L2_COEFF = 0.00005
REF_CLIP_GRADIENT = 100.0
REF_DATA_CONSTRAINT = 0.9


def _tiny_realnvp(config_module, example_shape):
  """The paper config with its sizes shrunk: 2 scales, 1 block of 2 features."""
  c = config_module.get_config()
  c.flow.resnet_blocks = 1
  c.flow.resnet_features = 2
  c.conv_impl = "xla"
  return c, realnvp.bind(c, example_shape)


def _reference_realnvp_loss(bound, params, model_state, pixels, noise, blocks):
  """``cost + l2_coeff · l2_reg`` of real_nvp_multiscale_dataset.py, written from its formulas.

  ``x_in = (pixels + noise) / 256``; ``logit_x_in = logit(((2 x_in − 1)·0.9 + 1) / 2)``;
  ``transform_cost = Σ softplus(l) + softplus(−l) − softplus(−log(0.9 / 0.1))``; the encoder
  gives ``z_out`` and ``log_diff`` (here: our flow, the architecture under test, in training
  mode); ``prior_ll = Σ −½ (z² + log 2π)``; ``cost = mean(−(prior_ll + log_diff))`` with the
  transform cost inside ``log_diff``; ``l2_reg = Σ magnitude² + Σ rescaling_scale²``.
  Returns ``(loss, (cost, l2_reg))``.
  """
  x_in = (pixels + noise) / 256.0
  logit_x_in = ((2.0 * x_in - 1.0) * REF_DATA_CONSTRAINT + 1.0) / 2.0
  logit_x_in = jnp.log(logit_x_in) - jnp.log(1.0 - logit_x_in)
  pre_logit_scale = math.log(REF_DATA_CONSTRAINT) - math.log(1.0 - REF_DATA_CONSTRAINT)
  transform_cost = jnp.sum(
    jax.nn.softplus(logit_x_in) + jax.nn.softplus(-logit_x_in) - jax.nn.softplus(-pre_logit_scale),
    axis=(1, 2, 3),
  )
  (z_out, log_diff, _), _ = bound.flow.apply(
    {"params": params, **model_state}, logit_x_in, train=True, mutable=["batch_stats"]
  )
  prior_ll = jnp.sum(-0.5 * (jnp.square(z_out) + math.log(2.0 * math.pi)), axis=1)
  cost = jnp.mean(-(prior_ll + log_diff + transform_cost))
  # The reference's trainable variables named "magnitude" (the weight-norm scales of the convs
  # built with scale=True: skip_in, each block's "out" and skip, the resnet's "out") and
  # "rescaling_scale" (one per checkerboard coupling). Ours: WeightNormConv's g, and the
  # checkerboard couplings' tanh scale (a vector of C, docs/FLOWS.md).
  flat = traverse_util.flatten_dict(params)
  magnitudes = [v for k, v in flat.items() if k[-1] == "g"]
  rescaling = [
    v
    for k, v in flat.items()
    if k[0].endswith(tuple(f"checkerboard{i}" for i in range(4))) and k[-1] == "scale"
  ]
  num_couplings = sum(
    1
    for name, kind, _ in realnvp.layer_names(bound.flow.spec)
    if kind in ("checkerboard", "channel")
  )
  num_checkerboard = sum(
    1 for _, kind, _ in realnvp.layer_names(bound.flow.spec) if kind == "checkerboard"
  )
  assert len(magnitudes) == num_couplings * (2 + 2 * blocks)
  assert len(rescaling) == num_checkerboard
  l2_reg = sum(jnp.sum(jnp.square(v)) for v in magnitudes + rescaling)
  return cost + REF_L2_COEFF * l2_reg, (cost, l2_reg)


@pytest.mark.parametrize(
  "config_module, example_shape",
  [(realnvp_cifar10, (4, 4, 3)), (realnvp_mnist, (8, 8, 1))],
  ids=["cifar10", "mnist"],
)
def test_realnvp_step_follows_the_reference_objective(x64, config_module, example_shape):
  c, bound = _tiny_realnvp(config_module, example_shape)
  assert (c.flow.l2, c.optimizer.clip_global_norm) == (REF_L2_COEFF, REF_CLIP_GRADIENT)
  family = realnvp.make_family(c, example_shape)
  state = realnvp.init(jax.random.key(0), flow=bound.flow, tx=optax.sgd(1.0))
  state = state.replace(
    params={"flow": _perturbed(state.params["flow"], 1)},
    model_state=jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), state.model_state),
  )
  rng = np.random.default_rng(0)
  pixels_int = rng.integers(0, 256, (4, *example_shape))
  batch = jnp.asarray(pixels_int / 127.5 - 1.0, jnp.float64)[None]
  # The step's dequantisation noise: U[0, 1) per pixel from the step's key (same noise).
  crop = c.flow.crop
  pixels = jnp.asarray(pixels_int, jnp.float64)
  if crop:
    pixels = pixels[:, crop:-crop, crop:-crop]
  key = jax.random.fold_in(state.step_key(), 0)
  noise = jax.random.uniform(key, pixels.shape, jnp.float64)

  ref = jax.grad(_reference_realnvp_loss, argnums=1, has_aux=True)
  ref_grad, (cost, l2_reg) = fast_jit(ref, static_argnums=(0, 5))(
    bound, state.params["flow"], state.model_state["flow"], pixels, noise, c.flow.resnet_blocks
  )
  ref_norm = float(_global_norm(ref_grad))

  def assert_clipped_reference(grad, clip_norm):  # tf.clip_by_global_norm of the reference's
    want = jax.tree.map(lambda g: g * clip_norm / max(ref_norm, clip_norm), ref_grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), grad, want)

  # The config's step (clipping at 100, in the reference's units) and its metrics.
  grad, metrics = _sgd_gradient(family.train_step, state, batch)
  assert_clipped_reference(grad, REF_CLIP_GRADIENT)
  num_dims = math.prod(pixels.shape[1:])
  np.testing.assert_allclose(metrics["grad_norm"], ref_norm, **TIGHT)
  np.testing.assert_allclose(metrics["l2_penalty"], l2_reg, **TIGHT)
  np.testing.assert_allclose(metrics["nll"], cost + num_dims * math.log(256.0), **TIGHT)
  np.testing.assert_allclose(metrics["loss"], metrics["nll"] + REF_L2_COEFF * l2_reg, **TIGHT)
  # bit_per_dim of the reference: (cost + log(256)·D) / (D·log 2).
  bits = (cost + math.log(256.0) * num_dims) / (num_dims * math.log(2.0))
  np.testing.assert_allclose(metrics["bits_per_dim"], bits, **TIGHT)

  # Clipping fires where the reference's does (just below its gradient norm; the tiny flow's
  # norm is below 100, so the config's step above did not clip), and a population member's
  # flow.l2 (state.hparams, the config's l2 set to 0 here) means the same as the config's.
  assert ref_norm < REF_CLIP_GRADIENT
  member = state.replace(hparams={"flow.l2": jnp.asarray(REF_L2_COEFF)})
  clip_norm = 0.9 * ref_norm
  grad, _ = _sgd_gradient(family.train_step, member, batch, l2=0.0, clip_global_norm=clip_norm)
  assert_clipped_reference(grad, clip_norm)


def _old_points_step(
  state, batch, *, flow, prep, l2, l2_params="kernels", clip_global_norm=0.0, learning_rate=1.0
):
  """The train step of 2-D flows as it was before the image objective changed (2026-12-06),
  restricted to points: its jaxpr is what the step must still trace to."""
  x = batch[0]
  key = jax.random.fold_in(state.step_key(), 0)
  l2 = state.hparams.get("flow.l2", l2)
  learning_rate = state.hparams.get("optimizer.learning_rate", learning_rate)
  model_state = state.model_state["flow"]

  def loss_fn(params):
    log_p, stats, per_layer = realnvp.log_prob(
      {"params": params, **model_state}, x, key, flow=flow, prep=prep, train=True
    )
    nll = -jnp.mean(log_p)
    loss = nll + l2 * realnvp.l2_penalty(params, l2_params)
    log_det = jnp.mean(sum(per_layer.values()))
    return loss, (nll, log_det, stats)

  (loss, (nll, log_det, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params["flow"]
  )
  if clip_global_norm > 0:
    grads, grad_norm = realnvp.clip_by_global_norm(grads, clip_global_norm)
  params, opt_state = realnvp.apply_gradients(
    state.tx["flow"], state.params["flow"], state.opt_state["flow"], grads, learning_rate
  )
  new_model_state = {"flow": {"batch_stats": stats}} if stats is not None else state.model_state
  new_state = state.replace(
    step=state.step + 1,
    params={"flow": params},
    opt_state={"flow": opt_state},
    model_state=new_model_state,
  )
  metrics = {"loss": loss, "nll": nll, "log_det": log_det}
  if clip_global_norm > 0:
    metrics["grad_norm"] = grad_norm
  return new_state, metrics


# sha256 of the toy step's jaxpr text (realnvp_toy.py:smoke, jax 0.10.2), recorded at 7350aa3,
# the tree before the image objective changed.
TOY_STEP_JAXPR_SHA256 = "0e46344e989083a2f1f95ea8b7c5b9a7528e427aa738641df6a35d0b03c9a31d"


def test_2d_flow_step_is_unchanged():
  c = realnvp_toy.get_config("smoke")
  family = realnvp.make_family(c, (2,))
  state = jax.jit(family.init)(jax.random.key(0))
  batch = jnp.zeros((1, c.batch_size, 2), jnp.float32)
  new = str(jax.make_jaxpr(family.train_step)(state, batch))
  bound = realnvp.bind(c, (2,))
  old = _old_points_step
  old = str(
    jax.make_jaxpr(
      lambda s, b: old(
        s,
        b,
        flow=bound.flow,
        prep=bound.prep,
        l2=float(c.flow.l2),
        l2_params=c.flow.l2_params,
        clip_global_norm=float(c.optimizer.clip_global_norm),
        learning_rate=float(c.optimizer.learning_rate),
      )
    )(state, batch)
  )
  assert new == old
  if TOY_STEP_JAXPR_SHA256 and jax.__version__ == "0.10.2":
    assert hashlib.sha256(new.encode()).hexdigest() == TOY_STEP_JAXPR_SHA256
