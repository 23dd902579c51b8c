"""Objective parity: each paper config's train step follows the gradient of its reference's loss.

For every paper config, the reference's loss is written here again from the reference code's
formula (in ``jnp``, not through our loss helpers), on a tiny instance of the same architecture
with the same parameters, batch and noise, and the gradient our train step applies is compared
with the gradient of that loss. The seam: the step's optimizer is replaced by plain SGD with a
unit step (``optax.sgd(1.0)``), so ``params − new_params`` is exactly the (clipped) gradient the
step computed. Float64 (``jax.enable_x64``), so that agreement is to round-off and a constant off
by 2× (even the L2 weight 5e-5) shows; the WGAN-GP nets cast to float32, so that one is float32.

References (read for their formulas): tensorflow/models ``research/real_nvp/
real_nvp_multiscale_dataset.py`` (RealNVP's ``cost + l2_coeff · l2_reg``, ``clip_by_global_norm``);
google-research/disentanglement_lib ``methods/unsupervised/vae.py`` and ``methods/shared/
losses.py`` (``BetaVAE``, ``AnnealedVAE``, ``bernoulli_loss``; Higgins et al.'s β-VAE is the
``BetaVAE`` loss with its fully connected nets); igul222/improved_wgan_training
``gan_cifar_resnet.py`` (``disc_cost``, ``gen_cost`` with AC-GAN, ``get_inception_score``).
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
from conftest import fast_jit
from flax import traverse_util

from experiments.configs import realnvp_cifar10, realnvp_mnist, realnvp_toy
from gen_models.models import realnvp

TIGHT = dict(rtol=1e-9, atol=1e-11)


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


# ----------------------------------------------------------------------------------------------
# β-VAE and AnnealedVAE (google-research/disentanglement_lib methods/unsupervised/vae.py and
# methods/shared/losses.py) and Higgins et al. 2017's fully connected β-VAE.


def _reference_vae_loss(params, x, eps, step, *, encoder, decoder, kind, beta, gamma, c_max, t):
  """disentanglement_lib's ``BaseVAE.model_fn`` loss, written from its formulas.

  ``z = z_mean + exp(z_logvar / 2)·ε``; ``per_sample_loss = Σ sigmoid_cross_entropy_with_logits
  (logits, labels=x)`` over the flattened pixels (``bernoulli_loss``, activation "logits");
  ``reconstruction_loss = mean``; ``kl_loss = mean(½ Σ (μ² + exp(log σ²) − log σ² − 1))``;
  ``BetaVAE``: ``+ β·kl_loss``; ``AnnealedVAE``: ``+ γ·|kl_loss − min(c_max, c_max·step/t)|``.
  Returns ``(loss, (reconstruction_loss, kl_loss, c))``.
  """
  z_mean, z_logvar = encoder.apply({"params": params["encoder"]}, x)
  z = z_mean + jnp.exp(z_logvar / 2.0) * eps
  logits = decoder.apply({"params": params["decoder"]}, z).reshape(x.shape[0], -1)
  labels = x.reshape(x.shape[0], -1)
  # tf.nn.sigmoid_cross_entropy_with_logits: max(l, 0) − l·x + log(1 + exp(−|l|)).
  xent = jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  reconstruction_loss = jnp.mean(jnp.sum(xent, axis=1))
  kl_loss = jnp.mean(0.5 * jnp.sum(jnp.square(z_mean) + jnp.exp(z_logvar) - z_logvar - 1.0, axis=1))
  c = jnp.minimum(c_max * 1.0, c_max * 1.0 * step / t)
  regularizer = beta * kl_loss if kind == "beta" else gamma * jnp.abs(kl_loss - c)
  return reconstruction_loss + regularizer, (reconstruction_loss, kl_loss, c)


# disentanglement_lib's values: BetaVAE β = 4 (the paper's dSprites β, also Higgins'); AnnealedVAE
# γ = 1000, C_max = 25, iteration_threshold 100,000 (unsupervised_study_v1's grid point).
@pytest.mark.parametrize(
  "config_name, kind, ref",
  [
    ("beta_vae_dsprites", "beta", dict(beta=4.0)),
    ("annealed_vae_dsprites", "capacity", dict(gamma=1000.0, c_max=25.0, t=100_000)),
    ("beta_vae_dsprites_higgins", "beta", dict(beta=4.0)),
  ],
)
def test_vae_step_follows_the_reference_objective(x64, config_name, kind, ref):
  import importlib

  from gen_models.models import vae

  c = importlib.import_module(f"experiments.configs.{config_name}").get_config()
  assert c.vae.likelihood == "bernoulli" and c.vae.objective == kind
  shape = (64, 64, 1)
  encoder, decoder = vae.make_networks(c.vae, shape, "xla")
  family = vae.make_family(c, shape)
  state = vae.init(
    jax.random.key(0),
    encoder=encoder,
    decoder=decoder,
    example_shape=shape,
    latent_dim=c.vae.latent_dim,
    learned_log_scale=None,
    tx=optax.sgd(1.0),
  )
  # Mid-schedule for the annealed objective: C = 25 · 40,000 / 100,000 = 10 nats.
  step = 40_000 if kind == "capacity" else 0
  state = state.replace(
    params=_perturbed(state.params, 1, scale=0.01), step=jnp.asarray(step, state.step.dtype)
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, *shape)) < 0.3, jnp.float64)  # Binary, as dSprites.
  eps = jax.random.normal(
    jax.random.fold_in(state.step_key(), 0), (2, c.vae.latent_dim), jnp.float64
  )

  full = dict(beta=1.0, gamma=1.0, c_max=0.0, t=1) | ref
  fn = functools.partial(_reference_vae_loss, encoder=encoder, decoder=decoder, kind=kind, **full)
  (loss, (rec, kl, cap)), ref_grad = fast_jit(jax.value_and_grad(fn, has_aux=True))(
    state.params, x, eps, float(step)
  )
  new, metrics = fast_jit(lambda s, b: family.train_step(s, b, learning_rate=1.0))(state, x[None])
  grad = jax.tree.map(lambda a, b: a - b, state.params, new.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), grad, ref_grad)
  # The values: the step computes C in float32 (``vae.capacity``: 9.999999 for 10), which
  # γ = 1000 carries into the loss (7e-8 of it); a 2× error in C, β or γ moves them by > 10 %.
  values = dict(rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], loss, **values)
  np.testing.assert_allclose(metrics["reconstruction"], rec, **values)
  np.testing.assert_allclose(metrics["kl"], kl, **values)
  np.testing.assert_allclose(metrics["elbo"], -(rec + kl), **values)
  if kind == "capacity":
    np.testing.assert_allclose(metrics["capacity"], cap, **values)


# ----------------------------------------------------------------------------------------------
# WGAN-GP ResNet with AC-GAN (igul222/improved_wgan_training gan_cifar_resnet.py).

# The reference's constants: LAMBDA 10 (the gradient penalty's "10*"), ACGAN_SCALE 1.0,
# ACGAN_SCALE_G 0.1, GEN_BS_MULTIPLE 2, and its two GPUs (each half of a batch generated alone).
REF_LAMBDA, REF_ACGAN_SCALE, REF_ACGAN_SCALE_G, REF_GEN_BS_MULTIPLE, REF_DEVICES = (
  10,
  1.0,
  0.1,
  2,
  2,
)


def _ce(logits, labels):
  """tf.nn.sparse_softmax_cross_entropy_with_logits: ``logsumexp(ℓ) − ℓ_y`` per example."""
  return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]


def _reference_generate(generator, g_params, g_state, z, labels):
  """``Generator(n, labels, noise)`` on each device's share (its batch norm sees its own)."""
  out = []
  for zs, ys in zip(jnp.split(z, REF_DEVICES), jnp.split(labels, REF_DEVICES), strict=True):
    x, _ = generator.apply(
      {"params": g_params, **g_state}, zs, ys, train=True, mutable=list(g_state)
    )
    out.append(x)
  return jnp.concatenate(out)


def _reference_disc_cost(c_params, critic, real_data, fake_data, labels, alpha):
  """``disc_cost = disc_wgan + ACGAN_SCALE · disc_acgan`` of gan_cifar_resnet.py:
  ``mean(D(fake)) − mean(D(real)) + 10 · mean((‖∇D(real + α(fake − real))‖ − 1)²)
  + mean CE(D_ac(real), labels)``."""
  disc = lambda x: critic.apply({"params": c_params}, x)
  disc_real, disc_fake = disc(real_data), disc(fake_data)
  cost = jnp.mean(disc_fake[:, 0]) - jnp.mean(disc_real[:, 0])
  interpolates = real_data + alpha * (fake_data - real_data)
  gradients = jax.grad(lambda x: jnp.sum(disc(x)[:, 0]))(interpolates)
  slopes = jnp.sqrt(jnp.sum(jnp.square(gradients.reshape(len(gradients), -1)), axis=1))
  cost = cost + REF_LAMBDA * jnp.mean((slopes - 1.0) ** 2)
  return cost + REF_ACGAN_SCALE * jnp.mean(_ce(disc_real[:, 1:], labels))


def _reference_gen_cost(g_params, generator, g_state, critic, c_params, z, fake_labels):
  """``gen_cost = −mean(D(G(z))) + ACGAN_SCALE_G · mean CE(D_ac(G(z)), fake_labels)``."""
  fake = _reference_generate(generator, g_params, g_state, z, fake_labels)
  out = critic.apply({"params": c_params}, fake)
  return -jnp.mean(out[:, 0]) + REF_ACGAN_SCALE_G * jnp.mean(_ce(out[:, 1:], fake_labels))


def test_wgan_gp_resnet_acgan_step_follows_the_reference_objective():
  """Float32 (the nets cast their outputs to float32): agreement to round-off of float32."""
  from experiments.configs import wgan_gp_cifar10_resnet
  from gen_models.models import wgan_gp

  c = wgan_gp_cifar10_resnet.get_config("conditional")
  assert c.gan.generator_batch_size == REF_GEN_BS_MULTIPLE * c.batch_size
  assert c.gan.bn_groups == REF_DEVICES and c.gan.dequantize
  with c.unlocked():  # A tiny instance: 4 (8) images, 4 features, one critic update.
    c.batch_size, c.gan.resnet_dim, c.gan.latent_dim, c.gan.n_critic = 4, 4, 8, 1
    c.gan.generator_batch_size = REF_GEN_BS_MULTIPLE * c.batch_size
    c.conv_impl = "xla"
  shape = (32, 32, 3)
  generator, critic = wgan_gp.make_networks(c.gan, shape, "xla")
  family = wgan_gp.make_family(c, shape)
  state = wgan_gp.init(
    jax.random.key(0),
    generator=generator,
    critic=critic,
    example_shape=shape,
    latent_dim=c.gan.latent_dim,
    tx={"generator": optax.sgd(1.0), "critic": optax.sgd(1.0)},
    num_classes=c.gan.num_classes,
  )
  rng = np.random.default_rng(0)
  kint = rng.integers(0, 256, (c.batch_size, *shape))
  labels = jnp.asarray(rng.integers(0, 10, c.batch_size), jnp.int32)
  batch = {"image": jnp.asarray(kint / 127.5 - 1.0, jnp.float32)[None], "label": labels[None]}

  # The step's noise, drawn as it draws it (same noise): critic update 0's key k splits into the
  # generator's z and the interpolation's ε, fold_in(k, 2) dequantises; the generator update's.
  key = state.step_key()
  k = jax.random.split(jax.random.fold_in(key, 0), 1)[0]
  z_key, eps_key = jax.random.split(k)
  z = jax.random.normal(z_key, (c.batch_size, c.gan.latent_dim))
  u = jax.random.uniform(jax.random.fold_in(k, 2), (c.batch_size, *shape))
  # The step interpolates ε·real + (1 − ε)·fake: the reference's α is 1 − ε.
  alpha = 1.0 - jax.random.uniform(eps_key, (c.batch_size, 1, 1, 1))
  gen_key = jax.random.fold_in(key, 1)
  gen_batch = c.gan.generator_batch_size
  z_g = jax.random.normal(gen_key, (gen_batch, c.gan.latent_dim))
  fake_labels = jax.random.randint(jax.random.fold_in(gen_key, 1), (gen_batch,), 0, 10)

  g_params, g_state = state.params["generator"], state.model_state["generator"]
  # all_real_data = 2·(k/256 − ½) + U[0, 1/128): dequantised as the reference.
  real_data = 2.0 * (jnp.asarray(kint, jnp.float32) / 256.0 - 0.5) + u / 128.0
  fake_data = _reference_generate(generator, g_params, g_state, z, labels)
  disc_grad = fast_jit(jax.grad(_reference_disc_cost), static_argnums=1)(
    state.params["critic"], critic, real_data, fake_data, labels, alpha
  )

  new, _ = fast_jit(lambda s, b: family.train_step(s, b, learning_rate=1.0))(state, batch)
  got = jax.tree.map(lambda a, b: a - b, state.params["critic"], new.params["critic"])
  scale = float(_global_norm(disc_grad))
  close = dict(rtol=1e-4, atol=1e-5 * scale)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **close), got, disc_grad)

  # The generator's update against the critic after its update (as the reference's next one).
  gen_grad = fast_jit(jax.grad(_reference_gen_cost), static_argnums=(1, 3))(
    g_params, generator, g_state, critic, new.params["critic"], z_g, fake_labels
  )
  got = jax.tree.map(lambda a, b: a - b, g_params, new.params["generator"])
  scale = float(_global_norm(gen_grad))
  close = dict(rtol=1e-4, atol=1e-5 * scale)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **close), got, gen_grad)


def test_inception_input_is_quantised_as_the_wgan_gp_reference():
  """gan_cifar_resnet.py's ``get_inception_score`` feeds ``((x + 1)·(255.99/2)).astype('int32')``:
  the paper config quantises its samples that way (``eval.quantization = "wgan_gp"``); the
  default rounds to nearest; an unknown value is a one-line error."""
  from experiments.configs import wgan_gp_cifar10_resnet
  from gen_models import config as config_lib
  from gen_models.data.images import to_uint8
  from gen_models.errors import UserError

  c = wgan_gp_cifar10_resnet.get_config()
  assert c.eval.quantization == "wgan_gp"
  x = np.concatenate(
    [[-1.0, 1.0, 0.0, -1.0 + 1 / 128, 1.0 - 1e-7], np.random.default_rng(0).uniform(-1, 1, 10_000)]
  ).astype(np.float32)
  want = ((x + 1.0) * (255.99 / 2)).astype("int32")
  np.testing.assert_array_equal(to_uint8(x, (-1.0, 1.0), "wgan_gp"), want)
  assert (to_uint8(x, (-1.0, 1.0)) != want).mean() > 0.2  # Rounding differs: 25 % here.
  c.eval.quantization = "round"
  with pytest.raises(
    UserError, match="^unknown eval.quantization 'round'; known: nearest, wgan_gp$"
  ):
    config_lib.validate(c)
