"""``vae.init``, the ``fc`` architecture and Adagrad against independent references.

Glorot-uniform kernels against the bound ``sqrt(6 / (fan_in + fan_out))`` with TensorFlow's fans
worked out by hand for every layer (scipy's Kolmogorov–Smirnov test against ``U(−b, b)``), the
default initialiser against parameter trees recorded before ``vae.init`` existed, the ``fc``
nets' parameter count by hand and their function against numpy, and Adagrad's unit-rate update
times the learning rate against ``optax.adagrad(lr)`` and a float64 numpy recurrence.
"""

from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from gen_models import UserError, models
from gen_models import config as config_lib
from gen_models.models import vae
from gen_models.nn import kernel_init
from gen_models.train_state import apply_gradients


def _config(**overrides):
  c = vae.default_config()
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return config_lib.validate(c)


def _init(config, shape):
  encoder, decoder = vae.make_networks(config.vae, shape)
  return {
    "e": jax.jit(encoder.init)(jax.random.key(0), jnp.zeros((1, *shape)))["params"],
    "d": jax.jit(decoder.init)(jax.random.key(1), jnp.zeros((1, config.vae.latent_dim)))["params"],
  }


def _leaves(tree) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


# ----------------------------------------------------------------------------------------------
# The default is flax's LeCun normal, bit for bit as before vae.init existed.

# sha256 (first 16 hex digits) over the sorted (path, bytes) of _init's tree, computed at commit
# 6a8339e (before vae.init) with the default config.
_BEFORE = {"conv": "34344d922a1b284f", "mlp": "1abe1fdd047bede9"}


@pytest.mark.parametrize(("architecture", "shape"), [("conv", (64, 64, 1)), ("mlp", (6,))])
def test_default_init_is_unchanged(architecture, shape):
  config = _config(**{"vae.architecture": architecture})
  assert config.vae.init == "lecun_normal"
  h = hashlib.sha256()
  for path, x in sorted(_leaves(_init(config, shape)).items()):
    h.update(path.encode())
    h.update(x.tobytes())
  assert h.hexdigest()[:16] == _BEFORE[architecture]


# ----------------------------------------------------------------------------------------------
# Glorot uniform, TensorFlow's fans.

# (path, (fan_in, fan_out)) as TensorFlow's _compute_fans reads its own kernel layouts: dense
# (A, B) → (A, B); conv (kh, kw, C_in, C_out) → (kh·kw·C_in, kh·kw·C_out); a transposed conv
# stored (kh, kw, C_out, C_in) by TensorFlow → (kh·kw·C_out, kh·kw·C_in). Written out by hand.
_CONV_FANS = {
  "['e']['Conv_0']['kernel']": (4 * 4 * 1, 4 * 4 * 32),
  "['e']['Conv_1']['kernel']": (4 * 4 * 32, 4 * 4 * 32),
  "['e']['Conv_2']['kernel']": (2 * 2 * 32, 2 * 2 * 64),
  "['e']['Conv_3']['kernel']": (2 * 2 * 64, 2 * 2 * 64),
  "['e']['Dense_0']['kernel']": (4 * 4 * 64, 256),
  "['e']['GaussianHead_0']['means']['kernel']": (256, 10),
  "['e']['GaussianHead_0']['log_var']['kernel']": (256, 10),
  "['d']['Dense_0']['kernel']": (10, 256),
  "['d']['Dense_1']['kernel']": (256, 1024),
  "['d']['ConvTranspose_0']['kernel']": (4 * 4 * 64, 4 * 4 * 64),  # 64 → 64.
  "['d']['ConvTranspose_1']['kernel']": (4 * 4 * 32, 4 * 4 * 64),  # 64 → 32.
  "['d']['ConvTranspose_2']['kernel']": (4 * 4 * 32, 4 * 4 * 32),  # 32 → 32.
  "['d']['ConvTranspose_3']['kernel']": (4 * 4 * 1, 4 * 4 * 32),  # 32 → 1.
}
_FC_FANS = {
  "['e']['Dense_0']['kernel']": (4096, 1200),
  "['e']['Dense_1']['kernel']": (1200, 1200),
  "['e']['GaussianHead_0']['means']['kernel']": (1200, 10),
  "['e']['GaussianHead_0']['log_var']['kernel']": (1200, 10),
  "['d']['Dense_0']['kernel']": (10, 1200),
  "['d']['Dense_1']['kernel']": (1200, 1200),
  "['d']['Dense_2']['kernel']": (1200, 1200),
  "['d']['Dense_3']['kernel']": (1200, 4096),
}


def _check_glorot(leaves: dict[str, np.ndarray], fans: dict[str, tuple[int, int]]) -> None:
  kernels = {k: v for k, v in leaves.items() if k.endswith("['kernel']")}
  assert set(kernels) == set(fans)
  for path, w in kernels.items():
    fan_in, fan_out = fans[path]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w = w.astype(np.float64).ravel()
    n = w.size
    assert np.all(np.abs(w) <= bound * (1 + 1e-6)), path  # The bound, to float32 round-off.
    assert np.max(np.abs(w)) > bound * (1 - 20 / n), path  # The bound is reached, not smaller.
    # Var(w) = b²/3; the mean of n squares of U(−b, b) has sd b²·sqrt(4/45/n): 6 sd.
    assert abs(np.mean(w**2) - bound**2 / 3) <= 6 * bound**2 * math.sqrt(4 / 45 / n), path
    assert scipy.stats.kstest(w, scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-4, path
  biases = [v for k, v in leaves.items() if k.endswith("['bias']")]
  assert len(biases) == len(kernels)
  assert all(np.all(b == 0) for b in biases)


def test_glorot_conv_kernels_have_tensorflows_bounds():
  config = _config(**{"vae.init": "glorot_uniform"})
  _check_glorot(_leaves(_init(config, (64, 64, 1))), _CONV_FANS)


def test_glorot_fc_kernels_have_tensorflows_bounds():
  config = _config(**{"vae.init": "glorot_uniform", "vae.architecture": "fc"})
  _check_glorot(_leaves(_init(config, (64, 64, 1))), _FC_FANS)


def test_transposed_kernels_read_fans_in_tensorflows_layout():
  """The transposed conv's initialiser takes fan_in from C_out (TensorFlow's layout); Glorot's
  bound depends on fan_in + fan_out only, so the values equal the plain reading's."""
  shape, key = (4, 4, 64, 32), jax.random.key(3)
  swapped = nn_variance_scaling(in_axis=-1, out_axis=-2)(key, shape)
  ours = kernel_init("glorot_uniform", transpose=True)(key, shape)
  plain = kernel_init("glorot_uniform")(key, shape)
  np.testing.assert_array_equal(ours, swapped)
  np.testing.assert_array_equal(ours, plain)
  lecun = kernel_init("lecun_normal", transpose=True)(key, shape)
  np.testing.assert_array_equal(lecun, jax.nn.initializers.lecun_normal()(key, shape))


def nn_variance_scaling(**axes):
  return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", **axes)


@pytest.mark.parametrize(
  ("overrides", "fragment"),
  [
    ({"vae.init": "xavier"}, "unknown vae.init 'xavier'"),
    ({"optimizer.name": "sgd"}, "unknown optimizer.name 'sgd'"),
    ({"optimizer.eps": -1.0}, "optimizer.eps must be >= 0"),
    ({"optimizer.initial_accumulator_value": -0.1}, "initial_accumulator_value must be >= 0"),
  ],
)
def test_bad_settings_are_one_line_user_errors(overrides, fragment):
  with pytest.raises(UserError, match=fragment) as info:
    models.make_family(_config(**overrides), (64, 64, 1))
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# The fc nets (Higgins et al. 2017's dSprites model, disentanglement_lib's fc_encoder/decoder).


def test_fc_parameter_count_by_hand():
  encoder, decoder = vae.make_networks(_config(**{"vae.architecture": "fc"}).vae, (64, 64, 1))
  shapes = lambda m, x: jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(x)))
  n = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  enc = (4096 * 1200 + 1200) + (1200 * 1200 + 1200) + 2 * (1200 * 10 + 10)
  dec = (10 * 1200 + 1200) + 2 * (1200 * 1200 + 1200) + (1200 * 4096 + 4096)
  assert n(shapes(encoder, (1, 64, 64, 1))) == enc == 6_381_620
  assert n(shapes(decoder, (1, 10))) == dec == 7_814_896


def test_fc_nets_compute_relu_encoder_and_tanh_decoder():
  """Both nets against numpy float64 on random parameters: ReLU hidden layers and two linear
  heads from the second one; tanh hidden layers and linear logits, reshaped to 64×64×1."""
  config = _config(**{"vae.architecture": "fc"})
  encoder, decoder = vae.make_networks(config.vae, (64, 64, 1))
  rng = np.random.default_rng(0)
  draw = lambda s: (rng.standard_normal(s.shape) / math.sqrt(s.shape[0])).astype(np.float32)
  pe = jax.tree.map(
    draw, jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
  )
  pd = jax.tree.map(draw, jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((1, 10))))
  x = (rng.random((3, 64, 64, 1)) < 0.1).astype(np.float32)
  z = rng.standard_normal((3, 10)).astype(np.float32)
  f64 = lambda a: np.asarray(a, np.float64)
  dense = lambda h, p: h @ f64(p["kernel"]) + f64(p["bias"])
  e = pe["params"]
  h = x.reshape(3, -1).astype(np.float64)
  h = np.maximum(dense(np.maximum(dense(h, e["Dense_0"]), 0), e["Dense_1"]), 0)
  mu, log_var = encoder.apply(pe, x)
  np.testing.assert_allclose(mu, dense(h, e["GaussianHead_0"]["means"]), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_var, dense(h, e["GaussianHead_0"]["log_var"]), atol=1e-4)
  d = pd["params"]
  g = z.astype(np.float64)
  for i in range(3):
    g = np.tanh(dense(g, d[f"Dense_{i}"]))
  out = decoder.apply(pd, z)
  assert out.shape == (3, 64, 64, 1)
  np.testing.assert_allclose(out, dense(g, d["Dense_3"]).reshape(3, 64, 64, 1), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Adagrad.


def _grads(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5)}


@pytest.mark.parametrize(("accumulator", "eps"), [(0.1, 0.0), (0.1, 1e-7), (0.0, 1e-7)])
def test_adagrad_unit_rate_times_lr_equals_optax_adagrad_and_the_recurrence(accumulator, eps):
  lr = 1e-2
  opt = _config(
    **{
      "optimizer.name": "adagrad",
      "optimizer.initial_accumulator_value": accumulator,
      "optimizer.eps": eps,
    }
  ).optimizer
  tx, ref = (
    vae.make_optimizer(opt),
    optax.adagrad(lr, initial_accumulator_value=accumulator, eps=eps),
  )
  params = jax.tree.map(lambda g: np.zeros_like(g, np.float32), _grads(0))
  ours, state, theirs, ref_state = params, tx.init(params), params, ref.init(params)
  # float64 numpy: a_t = a_{t-1} + g², θ_t = θ_{t-1} − lr·g/sqrt(a_t + eps).
  theta = jax.tree.map(lambda p: np.zeros(p.shape), params)
  acc = jax.tree.map(lambda p: np.full(p.shape, accumulator), params)
  for step in range(1, 5):
    grads = jax.tree.map(lambda g, s=step: np.float32(s) * g.astype(np.float32), _grads(step))
    ours, state = apply_gradients(tx, ours, state, grads, lr)
    updates, ref_state = ref.update(grads, ref_state, theirs)
    theirs = optax.apply_updates(theirs, updates)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    acc = jax.tree.map(lambda a, g: a + np.float64(g) ** 2, acc, grads)
    theta = jax.tree.map(lambda t, a, g: t - lr * g / np.sqrt(a + eps), theta, acc, grads)
    jax.tree.map(lambda o, t: np.testing.assert_allclose(o, t, rtol=1e-5, atol=1e-7), ours, theta)


def test_family_uses_the_named_optimizer():
  adam = models.make_family(_config(**{"vae.architecture": "mlp"}), (6,))
  adagrad = models.make_family(
    _config(**{"vae.architecture": "mlp", "optimizer.name": "adagrad"}), (6,)
  )
  s_adam = jax.eval_shape(adam.init, jax.random.key(0))
  s_adagrad = jax.eval_shape(adagrad.init, jax.random.key(0))
  names = lambda s: {type(x).__name__ for x in jax.tree.leaves(s.opt_state, is_leaf=_is_state)}
  assert "ScaleByAdamState" in names(s_adam) and "ScaleByRssState" not in names(s_adam)
  assert "ScaleByRssState" in names(s_adagrad) and "ScaleByAdamState" not in names(s_adagrad)


def _is_state(x) -> bool:
  return type(x).__name__ in ("ScaleByAdamState", "ScaleByRssState")
