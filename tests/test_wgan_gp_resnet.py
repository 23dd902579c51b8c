"""The WGAN-GP paper's ResNet nets, AC-GAN, dequantisation, lr decay, EMA and bfloat16.

References: the layer list of ``gan_cifar_resnet.py`` (igul222/improved_wgan_training) counted
by hand; the blocks recomputed from their parameters with ``lax`` convolutions and the
reference's slicing formulas; the reference's training loop simulated for the lr decay; the
EMA recursion; the AC-GAN loss identity; float32 for the bfloat16 step.
"""

from __future__ import annotations

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_trainer import smoke_config
from test_wgan_gp_math import _input_dilated_convolutions

from experiments.configs import wgan_gp_cifar10_resnet
from gen_models import config as config_lib
from gen_models import devices as dev
from gen_models import models, plan, trainer
from gen_models import outputs as outputs_lib
from gen_models.errors import UserError
from gen_models.models import wgan_gp
from gen_models.nn import (
  ConditionalBatchNorm,
  OptimizedBlock,
  ResidualBlock,
  mean_pool,
  upsample_nearest,
)

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # Same function, quicker to compile.


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {
    "/".join(str(k.key) for k in path): tuple(x.shape)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# Parameter counts: the reference's layer list, by hand.


def _conv(k, c_in, c_out):
  return {"kernel": (k, k, c_in, c_out), "bias": (c_out,)}


def _reference_layers(dim: int, classes: int) -> tuple[dict, dict]:
  """``gan_cifar_resnet.py``'s variables (Filters/Biases, W/b, scale/offset), in our names."""
  norm = (classes, dim) if classes else (dim,)
  bn = {"bn": {"scale": norm, "bias": norm}}
  up_block = {
    "shortcut": _conv(1, dim, dim),  # Generator.i.Shortcut (UpsampleConv, 1×1)
    "norm1": bn,  # Generator.i.N1 (conditional when classes)
    "conv1": _conv(3, dim, dim),  # Generator.i.Conv1 (UpsampleConv)
    "norm2": bn,
    "conv2": _conv(3, dim, dim),
  }
  generator = {
    "input": {"kernel": (128, 4 * 4 * dim), "bias": (4 * 4 * dim,)},  # Generator.Input
    **{f"block{i}": up_block for i in (1, 2, 3)},
    "norm": {"scale": (dim,), "bias": (dim,)},  # Generator.OutputN (never conditional)
    "output": _conv(3, dim, 3),  # Generator.Output
  }
  critic = {
    "block1": {  # OptimizedResBlockDisc1
      "shortcut": _conv(1, 3, dim),
      "conv1": _conv(3, 3, dim),
      "conv2": _conv(3, dim, dim),
    },
    "block2": {
      "shortcut": _conv(1, dim, dim),
      "conv1": _conv(3, dim, dim),
      "conv2": _conv(3, dim, dim),
    },
    "block3": {"conv1": _conv(3, dim, dim), "conv2": _conv(3, dim, dim)},  # Identity shortcuts.
    "block4": {"conv1": _conv(3, dim, dim), "conv2": _conv(3, dim, dim)},
    "output": {"kernel": (dim, 1), "bias": (1,)},  # Discriminator.Output
  }
  if classes:
    critic["classifier"] = {"kernel": (dim, classes), "bias": (classes,)}  # ACGANOutput
  return generator, critic


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


@pytest.mark.parametrize(
  ("conditional", "want_g", "want_c"),
  # 128·2048 + 2048 + 3·(2·(9·128² + 128) + 128² + 128 + 2·256) + 256 + 9·128·3 + 3, and the
  # critic 151,680 + 311,680 + 2·295,168 + 129; conditional: 6 norms of 2·10·128 instead of
  # 2·128, and a 128 → 10 classifier.
  [(False, 1_204_483, 1_053_825), (True, 1_218_307, 1_055_115)],
)
def test_parameter_counts_match_the_reference_layer_list(conditional, want_g, want_c):
  config = wgan_gp_cifar10_resnet.get_config("conditional" if conditional else None)
  generator, critic = wgan_gp.make_networks(config.gan, (32, 32, 3))
  classes = 10 if conditional else 0
  g_args = (jnp.zeros((1, 128)),) + ((jnp.zeros((1,), jnp.int32),) if classes else ())
  g_vars = jax.eval_shape(lambda: generator.init(jax.random.key(0), *g_args, train=False))
  c_vars = jax.eval_shape(lambda: critic.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  ref_g, ref_c = _reference_layers(128, classes)
  assert _shapes(g_vars["params"]) == _flat(ref_g)
  assert _shapes(c_vars["params"]) == _flat(ref_c)
  assert _count(g_vars["params"]) == want_g
  assert _count(c_vars["params"]) == want_c
  assert set(c_vars) == {"params"}  # No normalisation in the critic.
  assert _count(g_vars["batch_stats"]) == 7 * 2 * 128  # Running mean and var of 7 norms.


# ----------------------------------------------------------------------------------------------
# Layers, against the reference's formulas.


def _pool_ref(x):  # The reference's ConvMeanPool / MeanPoolConv slicing (NHWC here).
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.0


def _up_ref(x):  # Each pixel copied to a 2×2 square (the reference's concat + depth_to_space).
  i = np.arange(2 * x.shape[1]) // 2
  j = np.arange(2 * x.shape[2]) // 2
  return np.asarray(x)[:, i][:, :, j]


@settings(max_examples=20, deadline=None)
@given(
  hnp.arrays(
    np.float32, (2, 4, 6, 3), elements=st.floats(-100, 100, width=32, allow_subnormal=False)
  )
)
def test_mean_pool_and_nearest_upsampling(x):
  np.testing.assert_allclose(mean_pool(x), _pool_ref(x.astype(np.float64)), rtol=1e-6, atol=1e-5)
  up = upsample_nearest(x)
  np.testing.assert_array_equal(up, _up_ref(x))
  np.testing.assert_array_equal(mean_pool(up), x)  # Averaging four copies gives x back.


def _bn_ref(x, scale, bias, eps=1e-5):
  """Training-mode batch norm in float64; ``scale``/``bias`` ``(C,)`` or per example ``(B, C)``."""
  x = np.asarray(x, np.float64)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  scale, bias = np.asarray(scale), np.asarray(bias)
  if scale.ndim == 2:
    scale, bias = scale[:, None, None, :], bias[:, None, None, :]
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _randomised(variables, seed):
  """The same tree with standard-normal values (so that scales ≠ 1, offsets ≠ 0)."""
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


def test_conditional_batch_norm():
  rng = np.random.default_rng(0)
  x = (3.0 + 2.0 * rng.standard_normal((6, 3, 3, 4))).astype(np.float32)
  labels = np.array([0, 2, 2, 1, 0, 2], np.int32)
  cbn = ConditionalBatchNorm(num_classes=3)
  variables = cbn.init(jax.random.key(0), x, labels, train=False)
  params = _randomised(variables["params"], 1)
  stats = variables["batch_stats"]
  y, new = cbn.apply({"params": params, "batch_stats": stats}, x, labels, mutable=["batch_stats"])
  want = _bn_ref(x, params["scale"][labels], params["bias"][labels])
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  # Running statistics as flax's BatchNorm keeps them (its variance is the biased one too).
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  bn_vars = flax_bn.init(jax.random.key(0), x)
  bn_y, bn_new = flax_bn.apply(
    {**bn_vars, "params": {"scale": params["scale"][2], "bias": params["bias"][2]}},
    x,
    mutable=["batch_stats"],
  )
  chex.assert_trees_all_close(new, bn_new, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(  # One class for all examples: flax's BatchNorm.
    cbn.apply({"params": params, "batch_stats": stats}, x, np.full(6, 2), mutable=True)[0],
    bn_y,
    rtol=1e-5,
    atol=1e-5,
  )
  # Evaluation: the running statistics instead of the batch's.
  mean, var = (np.asarray(new["batch_stats"][k]) for k in ("mean", "var"))
  y_eval = cbn.apply({"params": params, **new}, x, labels, train=False)
  want = (x - mean) / np.sqrt(var + 1e-5) * params["scale"][labels][:, None, None]
  np.testing.assert_allclose(y_eval, want + params["bias"][labels][:, None, None], rtol=1e-5)


def _conv_ref(x, p):
  dn = ("NHWC", "HWIO", "NHWC")
  return (
    jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=dn) + p["bias"]
  )


def _relu(x):
  return np.maximum(np.asarray(x, np.float64), 0.0)


@pytest.mark.parametrize("kind", ["up", "down", "plain", "optimized"])
def test_residual_blocks_compute_the_reference_formulas(kind):
  x = np.random.default_rng(2).standard_normal((3, 4, 4, 5)).astype(np.float32)
  labels = np.array([1, 0, 1], np.int32)
  if kind == "optimized":
    block, args = OptimizedBlock(6), (x,)
  elif kind == "up":
    block, args = ResidualBlock(6, "up", normalize=True, num_classes=2), (x, labels)
  else:
    block, args = ResidualBlock(6 if kind == "down" else 5, kind if kind == "down" else None), (x,)
  variables = jax.jit(block.init, compiler_options=FAST_COMPILE)(jax.random.key(0), *args)
  p = _randomised(variables["params"], 3)
  apply = functools.partial(block.apply, mutable=True)
  y = jax.jit(apply, compiler_options=FAST_COMPILE)({**variables, "params": p}, *args)[0]
  f32 = lambda a: np.asarray(a, np.float32)
  if kind == "optimized":  # conv → ReLU → conv → pool, shortcut pool → 1×1 conv.
    h = _pool_ref(_conv_ref(f32(_relu(_conv_ref(x, p["conv1"]))), p["conv2"]))
    want = _conv_ref(f32(_pool_ref(x)), p["shortcut"]) + h
  elif kind == "up":  # CBN → ReLU → up → conv → CBN → ReLU → conv, shortcut up → 1×1 conv.
    cbn = lambda a, n: f32(
      _relu(_bn_ref(a, p[n]["bn"]["scale"][labels], p[n]["bn"]["bias"][labels]))
    )
    h = _conv_ref(f32(_up_ref(cbn(x, "norm1"))), p["conv1"])
    want = _conv_ref(f32(_up_ref(x)), p["shortcut"]) + _conv_ref(cbn(h, "norm2"), p["conv2"])
  else:  # ReLU → conv → ReLU → conv [→ pool]; shortcut 1×1 conv → pool, or the identity.
    h = _conv_ref(f32(_relu(_conv_ref(f32(_relu(x)), p["conv1"]))), p["conv2"])
    if kind == "down":
      assert p["conv1"]["kernel"].shape == (3, 3, 5, 5)  # C_in → C_in, then → features.
      want = _pool_ref(_conv_ref(x, p["shortcut"])) + _pool_ref(h)
    else:
      assert "shortcut" not in p
      want = x + h
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_critic_treats_examples_independently(f32_step):
  """The gradient penalty needs per-example critic values: no batch statistics in the critic."""
  family, state = f32_step[0], f32_step[1]
  x = np.random.default_rng(4).standard_normal((3, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(family.critic_values)
  together = apply(state, x)
  assert together.shape == (3,)
  alone = np.concatenate([apply(state, np.repeat(x[i : i + 1], 3, 0))[:1] for i in range(3)])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Dequantisation, the learning-rate decay, the classifier loss.


def test_dequantize_fills_each_8_bit_bin_uniformly():
  k = np.repeat(np.arange(256, dtype=np.float32), 400)
  x = k / 127.5 - 1.0  # The datasets' images: uint8 / 127.5 − 1.
  y = np.asarray(wgan_gp.dequantize(jnp.asarray(x), jax.random.key(0)), np.float64)
  # The reference: 2 · (k/256 − 1/2) + U[0, 1/128).
  lo = 2 * (k / 256.0 - 0.5)
  assert np.all(y >= lo - 1e-6) and np.all(y <= lo + 1 / 128 + 1e-6)
  assert y.min() >= -1.0 and y.max() < 1.0
  u = (y - lo) * 128  # U[0, 1): mean 1/2, variance 1/12, per bin and over all.
  se = np.sqrt(1 / 12 / 400)
  assert np.all(np.abs(u.reshape(256, 400).mean(1) - 0.5) < 5 * se)
  assert abs(u.var() - 1 / 12) < 0.002


def test_linear_decay_matches_the_reference_loop():
  """Simulates ``gan_cifar_resnet.py``'s loop: iteration ``i`` runs (if ``i ≥ 1``) one generator
  update, then ``n_critic`` critic updates, all at ``lr · max(0, 1 − i/ITERS)``."""
  lr, iters, n_critic = 2e-4, 7, 5
  gen_rates, critic_rates = [], []
  for i in range(iters):
    rate = lr * max(0.0, 1.0 - i / iters)
    if i > 0:
      gen_rates.append(rate)
    critic_rates += [rate] * n_critic
  g = wgan_gp.linear_decay(lr, iters, 1, offset=1)
  c = wgan_gp.linear_decay(lr, iters, n_critic)
  np.testing.assert_allclose([g(jnp.int32(t)) for t in range(iters - 1)], gen_rates, rtol=1e-6)
  np.testing.assert_allclose(
    [c(jnp.int32(t)) for t in range(iters * n_critic)], critic_rates, rtol=1e-6
  )
  assert float(g(jnp.int32(iters + 3))) == 0.0  # Never negative past the end.


def test_classifier_loss_and_accuracy():
  logits = np.random.default_rng(5).standard_normal((7, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 3, 1, 0])
  log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
  want = -np.mean(log_p[np.arange(7), labels])
  np.testing.assert_allclose(wgan_gp.classifier_loss(logits, labels), want, rtol=1e-6)
  want_acc = np.mean(np.argmax(logits, 1) == labels)
  assert float(wgan_gp.accuracy(logits, labels)) == pytest.approx(want_acc)


# ----------------------------------------------------------------------------------------------
# One compiled conditional step of the `:conditional,smoke` config with EMA on (dequantisation,
# lr decay and a generator batch of its own are on too), jitted exactly as the trainer does, so
# that the session's compilation cache shares it with the smoke runs at the end; and the same
# step in bfloat16.


def _smoke_config(**gan):
  c = wgan_gp_cifar10_resnet.get_config("conditional,smoke")
  c.gan.ema_decay = 0.5
  for k, v in gan.items():
    c.gan[k] = v
  return c


def _batch(config):
  rng = np.random.default_rng(6)
  shape = (config.gan.n_critic, config.batch_size)
  k = rng.integers(0, 256, (*shape, 32, 32, 3))
  labels = rng.integers(0, 10, shape).astype(np.int32)
  return {"image": (k / 127.5 - 1).astype(np.float32), "label": labels}


def _one_step(config):
  """Step 0 → 1 jitted plainly (one device), compiled fast."""
  family = wgan_gp.make_family(config, (32, 32, 3))
  state = jax.jit(family.init, compiler_options=FAST_COMPILE)(jax.random.key(0))
  new_state, metrics = (
    jax.jit(family.train_step)
    .lower(state, _batch(config))
    .compile(FAST_COMPILE)(state, _batch(config))
  )
  return family, state, new_state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def f32_step():
  """``(family, state 0, state 1, metrics, lowered)``, the step jitted as the trainer does."""
  config = _smoke_config()
  family = wgan_gp.make_family(config, (32, 32, 3))
  mesh = dev.make_mesh()
  replicated = dev.replicated(mesh)
  init = jax.jit(family.init, out_shardings=replicated, compiler_options=FAST_COMPILE)
  step = jax.jit(
    plan._checked_step(family.train_step),
    in_shardings=(replicated, dev.batch_sharding(mesh, batch_axis=1)),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  batch = dev.global_batch(_batch(config), mesh, batch_axis=1)
  state = init(jax.random.key(config.seed))
  lowered = step.lower(state, batch)
  new_state, metrics = step(init(jax.random.key(config.seed)), batch)  # Donates its own copy.
  metrics = jax.device_get(metrics)
  assert metrics.pop("finite")
  return family, state, new_state, metrics, lowered


def test_conditional_step_losses_add_up(f32_step):
  _, _, _, m, _ = f32_step
  # L_D^AC = E D(x̃) − E D(x) + λ·GP + s_D·CE, per critic update and so in the mean.
  want = -m["wasserstein"] + 10.0 * m["gradient_penalty"] + 1.0 * m["classifier_loss"]
  assert m["critic_loss"] == pytest.approx(want, rel=1e-5)
  for name in ("classifier_accuracy_real", "classifier_accuracy_fake"):
    assert m[name] * 16 == pytest.approx(round(m[name] * 16))  # Of 2 updates × 8 examples.
  assert m["classifier_loss"] > 0 and m["generator_classifier_loss"] > 0
  assert all(np.isfinite(v) for v in m.values())


def test_ema_of_the_generator_after_one_step(f32_step):
  _, state, new_state, _, _ = f32_step
  old, new = jax.device_get((state, new_state))
  chex.assert_trees_all_equal(old.ema_params["generator"], old.params["generator"])
  want = jax.tree.map(
    lambda e, p: 0.5 * e + 0.5 * p, old.ema_params["generator"], new.params["generator"]
  )
  chex.assert_trees_all_close(new.ema_params["generator"], want, rtol=1e-6, atol=1e-7)
  assert set(new.ema_params) == {"generator"}
  moved = jax.tree.map(lambda a, b: np.any(a != b), old.params, new.params)
  assert all(jax.tree.leaves(moved["generator"]["block1"]))


def test_generator_norms_of_unused_classes_are_untouched(f32_step):
  """Conditional batch norm: only the rows of the classes the generator update drew change."""
  _, state, new_state, _, _ = f32_step
  gen_key = jax.random.fold_in(state.step_key(), 1)  # As train_step derives the labels.
  drawn = set(np.asarray(jax.random.randint(jax.random.fold_in(gen_key, 1), (16,), 0, 10)))
  assert 0 < len(drawn) < 10
  for block in ("block1", "block2", "block3"):
    for norm in ("norm1", "norm2"):
      old = state.params["generator"][block][norm]["bn"]["scale"]
      new = new_state.params["generator"][block][norm]["bn"]["scale"]
      changed = {c for c in range(10) if np.any(old[c] != new[c])}
      assert changed == drawn, (block, norm)


def test_samples_come_from_the_moving_average(f32_step):
  family, _, new_state, _, _ = f32_step
  sample = jax.jit(family.sample, static_argnums=2)
  key = jax.random.key(1)
  x = sample(new_state, key, 3)
  assert x.shape == (3, 32, 32, 3) and np.all(np.abs(x) <= 1)
  ema = new_state.ema_params["generator"]
  as_live = new_state.replace(params={**new_state.params, "generator": ema})
  swapped = new_state.replace(ema_params={"generator": new_state.params["generator"]})
  np.testing.assert_array_equal(x, sample(as_live, key, 3))
  assert not np.allclose(x, sample(swapped, key, 3))


def test_resnet_step_on_cpu_has_no_input_dilated_convolution(f32_step):
  text = f32_step[4].as_text()
  assert text.count("stablehlo.convolution") > 40
  assert not _input_dilated_convolutions(text)


def test_bfloat16_step_is_close_to_the_float32_step(f32_step):
  """Parameters and optimizer state stay float32; the nets compute in bfloat16.

  Tolerance: bfloat16 keeps 8 significant bits (unit round-off 2⁻⁸ ≈ 0.4 %); each of the
  ~20 layers of a forward, backward and double-backward pass adds an error of that order, so
  losses agree to a few percent (5 % allowed) and, as Adam's first update is ``−lr·sign(g)``
  (β1 = 0), at least 90 % of the critic's parameters take the same first step.
  """
  _, state, new_state, m, _ = f32_step
  _, state_bf, new_bf, m_bf = _one_step(_smoke_config(compute_dtype="bfloat16"))
  chex.assert_trees_all_equal(state.params, state_bf.params)  # Same float32 initialisation.
  for tree in (new_bf.params, new_bf.opt_state, new_bf.ema_params, new_bf.model_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
      jnp.dtype(jnp.float32)
    }
  for name in ("wasserstein", "gradient_penalty", "classifier_loss", "critic_loss"):
    assert m_bf[name] == pytest.approx(m[name], rel=0.05, abs=1e-3), name
  step = lambda a, b: np.sign(np.asarray(b) - np.asarray(a)).ravel()
  old, f32, bf = (jax.tree.leaves(s.params["critic"]) for s in (state, new_state, new_bf))
  same = np.concatenate([step(o, a) == step(o, b) for o, a, b in zip(old, f32, bf, strict=True)])
  assert same.mean() > 0.9, same.mean()


def test_smoke_step_has_the_reference_grouping_and_is_device_count_invariant(f32_step):
  """The fixture's step (the paper config's ``bn_groups = 2``, batch sharded over 8 devices)
  against the same step on one device: the generator's batch-norm running averages (made from
  its 2 × 4 critic fakes and 2 × 8 generator samples, before any parameter it depends on moves)
  agree to round-off, and so do the step's losses. Were the groups per device (one example
  each), the statistics would differ entirely."""
  family, _, new8, m8, _ = f32_step
  assert family.train_step.keywords["bn_groups"] == 2
  _, _, new1, m1 = _one_step(_smoke_config())
  chex.assert_trees_all_close(
    jax.device_get(new8.model_state), new1.model_state, rtol=1e-4, atol=1e-5
  )
  for name in ("wasserstein", "gradient_penalty", "classifier_loss", "generator_loss"):
    assert m8[name] == pytest.approx(m1[name], rel=1e-3, abs=1e-5), name


@pytest.fixture(scope="module")
def small_generator():
  gen = wgan_gp.ResNetGenerator(8, 3, num_classes=10, conv_impl="xla")
  z = jax.random.normal(jax.random.key(0), (8, 16))
  labels = jnp.arange(8) % 10
  variables = jax.jit(gen.init, static_argnames="train", compiler_options=FAST_COMPILE)(
    jax.random.key(1), z[:1], labels[:1], train=False
  )
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])  # Not the initial 0 and 1.
  return gen, variables["params"], {"batch_stats": stats}, z, labels


def test_grouped_batch_norm_is_each_group_generated_alone(small_generator):
  """``bn_groups = 2``: the first half of the batch is generated exactly as that half alone in
  training mode, likewise the second, and the running averages are the mean of the two halves'
  updates (μ·r + (1 − μ)·mean of the halves' statistics)."""
  gen, params, model_state, z, labels = small_generator
  run = jax.jit(
    functools.partial(wgan_gp._generate, gen, train=True, groups=2),
    compiler_options=FAST_COMPILE,
  )
  out, stats = run(params, model_state, z, labels=labels)
  alone = jax.jit(
    lambda p, s, z, y: gen.apply({"params": p, **s}, z, y, train=True, mutable=["batch_stats"]),
    compiler_options=FAST_COMPILE,
  )
  halves = [alone(params, model_state, z[i : i + 4], labels[i : i + 4]) for i in (0, 4)]
  np.testing.assert_allclose(out, np.concatenate([h[0] for h in halves]), rtol=1e-4, atol=1e-5)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1])
  chex.assert_trees_all_close(stats, mean, rtol=1e-5, atol=1e-6)
  whole, _ = wgan_gp._generate(gen, params, model_state, z, True, labels)
  assert not np.allclose(out, whole, atol=1e-3)  # The grouping changes the statistics.


def test_samples_with_batch_statistics_in_chunks(small_generator):
  """``bn_chunk = 4``: 5 samples are the first 5 of ⌈5/4⌉·4 = 8, each group of 4 generated in
  training mode with its own statistics (``z`` and the classes drawn for all 8); a request of 3
  gives the first 3 of a request of 4 (every sample comes from a group of exactly 4); the
  running averages are not used."""
  gen, params, model_state, _, _ = small_generator
  from gen_models.train_state import TrainState

  state = TrainState.create(
    params={"generator": params},
    tx={"generator": __import__("optax").sgd(0.0)},
    rng=jax.random.key(0),
    model_state={"generator": model_state},
  )
  draw = jax.jit(
    functools.partial(wgan_gp.sample, generator=gen, latent_dim=16, num_classes=10, bn_chunk=4),
    static_argnums=2,
    compiler_options=FAST_COMPILE,
  )
  rng = jax.random.key(2)
  x = draw(state, rng, 5)
  z = jax.random.normal(rng, (8, 16))
  y = jax.random.randint(jax.random.fold_in(rng, 1), (8,), 0, 10)
  alone = lambda z, y: gen.apply(
    {"params": params, **model_state}, z, y, train=True, mutable=["batch_stats"]
  )
  want = np.concatenate([alone(z[:4], y[:4])[0], alone(z[4:], y[4:])[0]])[:5]
  np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(draw(state, rng, 3), draw(state, rng, 4)[:3])
  other = {"batch_stats": jax.tree.map(lambda v: v + 1.0, model_state["batch_stats"])}
  np.testing.assert_array_equal(draw(state.replace(model_state={"generator": other}), rng, 5), x)


# ----------------------------------------------------------------------------------------------
# EMA through the trainer: determinism, resume and 1 vs 8 devices (toy nets, EMA on).


def _ema_config(**overrides):
  # One critic update per step: the step compiles faster, and EMA does not depend on it.
  return smoke_config("wgan_gp", **{"gan.ema_decay": 0.9, "gan.n_critic": 1, **overrides})


def _final(workdir, devices=None):
  _, _, state = trainer.load_run(str(workdir), devices)
  return jax.device_get((state.params, state.opt_state, state.ema_params, int(state.step)))


def test_ema_state_is_deterministic_resumes_exactly_and_is_device_count_invariant(tmp_path):
  """Two runs of the same config, one of them stopped and resumed, end bit-identical (so the
  run is deterministic and the resume exact, EMA included); one device agrees with eight."""
  config = lambda n: _ema_config(num_train_steps=n, checkpoint_every_steps=2, eval_every_steps=0)
  devices = jax.devices()
  trainer.train(config(4), str(tmp_path / "a"))
  trainer.train(config(2), str(tmp_path / "part"))  # Stop at 2, resume to 4.
  trainer.train(config(4), str(tmp_path / "part"))
  trainer.train(config(4), str(tmp_path / "one"), devices=devices[:1])
  a, part = _final(tmp_path / "a"), _final(tmp_path / "part")
  one = _final(tmp_path / "one", devices[:1])
  assert a[3] == part[3] == 4
  chex.assert_trees_all_equal(a, part)
  chex.assert_trees_all_close(a[2], one[2], rtol=2e-5, atol=2e-6)  # Reduction order only.
  # The average lags the parameters: it is not a copy of them.
  diff = jax.tree.map(
    lambda e, p: float(np.max(np.abs(e - p))), a[2]["generator"], a[0]["generator"]
  )
  assert min(jax.tree.leaves(diff)) > 0


class _Points:
  """A stand-in dataset of 2-D points: ``reference(n)`` gives the first ``min(n, 500)``."""

  kind = "points"

  def reference(self, n):
    return np.random.default_rng(0).standard_normal((500, 2))[:n]


@pytest.mark.parametrize(
  ("final_num", "want"),
  # Extracted: real and fake at the periodic eval, then (real if new and) fake at the last.
  [(0, [40, 40, 40]), (70, [40, 40, 70, 70]), (900, [40, 40, 500, 900])],
)
def test_final_evaluation_uses_final_num_samples(final_num, want):
  """The periodic evaluation uses eval.num_samples, the one at the last step
  eval.final_num_samples (0: the same); the real side has at most all reference examples."""
  config = smoke_config(**{"eval.metrics": "fid", "eval.num_samples": 40})
  config.eval.final_num_samples = final_num
  family = models.Family(
    init=None,
    train_step=None,
    sample=lambda state, key, n: jax.random.normal(key, (n, 2)),
    evaluate=lambda state, key, reference: {},
  )
  seen = []

  def extract(x):
    seen.append(len(x))
    return x, None

  outputs = outputs_lib.Outputs(config, family, _Points(), None, jax.random.key(0), extract)
  periodic = outputs.evaluate(2, None)
  final = outputs.evaluate(6, None, final=True)
  assert seen == want
  assert np.isfinite(periodic["eval/fid"]) and np.isfinite(final["eval/fid"])


@pytest.mark.parametrize(
  ("overrides", "shape", "fragment"),
  [
    ({"gan.conditional": True, "dataset.labels": False}, (32, 32, 3), "dataset.labels=True"),
    ({"gan.conditional": True, "gan.num_classes": 7}, (32, 32, 3), "has 10 classes"),
    ({"gan.compute_dtype": "float16"}, (32, 32, 3), "unknown gan.compute_dtype"),
    ({"gan.architecture": "dcgan", "gan.compute_dtype": "bfloat16"}, (32, 32, 3), "'resnet'"),
    ({}, (28, 28, 1), "32×32×C"),
    ({"gan.ema_decay": 1.0}, (32, 32, 3), "ema_decay"),
    ({"gan.generator_batch_size": -1}, (32, 32, 3), "generator_batch_size"),
    ({"gan.bn_groups": 3}, (32, 32, 3), "gan.bn_groups=3 must divide the batch sizes"),
    ({"gan.sample_bn_chunk": -1}, (32, 32, 3), "gan.sample_bn_chunk >= 0"),
  ],
)
def test_bad_settings_are_one_line_user_errors(overrides, shape, fragment):
  config = wgan_gp_cifar10_resnet.get_config("conditional,smoke")
  config.gan.conditional = False
  for key, value in overrides.items():
    config_lib.set_path(config, key, value)
  with pytest.raises(UserError, match=re.escape(fragment)):
    wgan_gp.make_family(config, shape)


# ----------------------------------------------------------------------------------------------
# The AC-GAN config end to end: on mock CIFAR-10, then on a prepared miniature CIFAR-10 (the
# second run reuses the first's compiled step through the session's compilation cache).


def test_conditional_smoke_on_mock_and_prepared_cifar10(tmp_path):
  import tensorflow_datasets as tfds
  from test_prepare_data import _cifar_arrays, _write_cifar

  from gen_models.data import archives

  _write_cifar(tmp_path / "cifar-10-binary.tar.gz", _cifar_arrays())
  archives.prepare_cifar10(str(tmp_path / "cifar-10-binary.tar.gz"), str(tmp_path / "tfds"))
  runs = {}
  for source in ("mock", "prepared"):
    config = _smoke_config()  # EMA on, as the step above: the same compiled step.
    workdir = str(tmp_path / source)
    if source == "mock":
      with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        runs[source] = trainer.train(config, workdir)
    else:
      config.dataset.data_dir = str(tmp_path / "tfds")
      runs[source] = trainer.train(config, workdir)
  for source, final in runs.items():
    assert {"classifier_loss", "generator_classifier_loss", "critic_loss"} <= set(final), source
    assert all(np.isfinite(v) for v in final.values()), (source, final)
    _, family, state = trainer.load_run(str(tmp_path / source))
    assert int(state.step) == 3 and state.params["critic"]["classifier"]["kernel"].shape == (8, 10)
    x = np.asarray(family.sample(state, jax.random.key(0), 2))
    assert x.shape == (2, 32, 32, 3) and np.all(np.abs(x) <= 1.0)
