"""The train steps the benchmarks time and profile (``experiments.bench.train``,
``bench.profile_step``): each config's step jitted as the trainer jits it, with batches of
the right kind already on the devices. No flags here, so both commands can import it."""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments.bench import common

CONFIGS = common.CONFIGS  # The benchmarks' one table of config names (bench/common.py).
POOL = 4  # Distinct device-resident batches cycled through by the timed loop.
# (net, kind, kernel size, stride, spatial size of the input, C_in, C_out): every stride-2 conv
# of the DCGAN nets (WGAN-GP cifar10) and the β-VAE conv nets (dSprites), and stride-1 convs of
# the paper ResNet (its 16² blocks) and the RealNVP CIFAR-10 s/t nets (3×3 at 32², 1×1 at 16²);
# batch 64.
LAYERS = (
  ("dcgan", "conv", 5, 2, 32, 3, 64),
  ("dcgan", "conv", 5, 2, 16, 64, 128),
  ("dcgan", "conv", 5, 2, 8, 128, 256),
  ("dcgan", "conv_transpose", 5, 2, 4, 256, 128),
  ("dcgan", "conv_transpose", 5, 2, 8, 128, 64),
  ("dcgan", "conv_transpose", 5, 2, 16, 64, 3),
  ("vae", "conv", 4, 2, 64, 1, 32),
  ("vae", "conv", 4, 2, 32, 32, 32),
  ("vae", "conv", 2, 2, 16, 32, 64),
  ("vae", "conv", 2, 2, 8, 64, 64),
  ("vae", "conv_transpose", 4, 2, 4, 64, 64),
  ("vae", "conv_transpose", 4, 2, 8, 64, 32),
  ("vae", "conv_transpose", 4, 2, 16, 32, 32),
  ("vae", "conv_transpose", 4, 2, 32, 32, 1),
  ("resnet", "conv", 3, 1, 16, 128, 128),
  ("realnvp", "conv", 3, 1, 32, 64, 64),
  ("realnvp", "conv", 1, 1, 16, 128, 128),
)
LAYER_BATCH = 64


def config_for(name: str, spec: dict):
  """The validated config of :data:`CONFIGS` ``name`` with ``spec``'s ``critic_loop``
  (``"scan"``, ``"unrolled"`` or None: the config's own), ``conv_impl`` (None: ``auto``) and
  ``batch_size`` (None: the config's)."""
  from gen_models import config as config_lib

  config = common.load_config(CONFIGS[name][0])
  if "gan" in config and spec.get("critic_loop") is not None:  # None: the config's own loop.
    config.gan.unroll_critic = spec.get("critic_loop") == "unrolled"
  config.conv_impl = spec.get("conv_impl") or "auto"
  if spec.get("batch_size") is not None:
    config.batch_size = spec["batch_size"]
  return config_lib.validate(config)


def host_batches(name: str, config, shape, n_critic: int) -> list[np.ndarray]:
  """``POOL`` host batches ``(n_critic, B, *shape)`` float32."""
  from gen_models import data as data_lib

  if name in ("toy", "flow"):
    it = data_lib.StepIterator(data_lib.create(config, config.batch_size), n_critic)
    return [next(it) for _ in range(POOL)]
  rng = np.random.default_rng(0)
  size = (n_critic, config.batch_size, *shape)
  if name == "vae":  # Binary images, as dSprites.
    return [(rng.random(size) < 0.1).astype(np.float32) for _ in range(POOL)]
  if name.startswith(("resnet", "realnvp")):  # 8-bit images, as the dequantisation expects.
    return [(rng.integers(0, 256, size) / 127.5 - 1).astype(np.float32) for _ in range(POOL)]
  return [rng.standard_normal(size, dtype=np.float32) for _ in range(POOL)]


def make_step(spec: dict):
  """The JAX train step of ``spec["config"]`` as the trainer jits it, on ``spec["devices"]``
  devices (``spec`` also takes ``conv_impl``, ``critic_loop`` and ``batch_size``, as
  :func:`config_for`): ``(step_fn, state, pool, config, n_critic)``, with ``POOL`` device
  batches ``(n_critic, B, *shape)`` and the state replicated; ``step_fn`` donates the state."""
  from gen_models import devices as dev
  from gen_models import models

  name, shape = spec["config"], CONFIGS[spec["config"]][1]
  config = config_for(name, spec)
  devices = jax.devices()[: spec["devices"]]
  mesh = dev.make_mesh(devices)
  dev.check_batch_size(config.batch_size, mesh)
  family = models.make_family(config, shape)
  n_critic = family.batches_per_step
  state_sharding = dev.replicated(mesh)
  state = jax.jit(family.init, out_shardings=state_sharding)(jax.random.key(config.seed))
  pool = [
    dev.global_batch(b, mesh, batch_axis=1) for b in host_batches(name, config, shape, n_critic)
  ]
  step_fn = jax.jit(
    family.train_step,
    in_shardings=(state_sharding, dev.batch_sharding(mesh, batch_axis=1)),
    out_shardings=(state_sharding, state_sharding),
    donate_argnums=0,
  )
  return step_fn, state, pool, config, n_critic


def run_steps(compiled, state, pool, steps: int):
  """``steps`` calls of the compiled step, cycling through ``pool`` from its first batch:
  ``(state, metrics, seconds)``, timed until the last state and metrics are ready (``metrics``
  None for 0 steps)."""
  metrics = None
  t0 = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, pool[i % len(pool)])
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - t0
