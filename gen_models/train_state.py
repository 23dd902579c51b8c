"""The single training state shared by every model family.

A GAN has two components (``generator``, ``critic``) with an optimizer each; a VAE has
``encoder`` and ``decoder`` (one optimizer or two); a flow has ``flow``. All of them are the
same class: dictionaries keyed by component name.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree.

  Attributes:
    step: int32 scalar, the number of completed train steps.
    params: ``{component: params}``, e.g. ``{"generator": ..., "critic": ...}``.
    opt_state: ``{optimizer_name: optax state}``. An optimizer name is usually a component
      name; a family that trains several components with one optimizer uses one entry whose
      parameters are the sub-dict of those components.
    model_state: ``{component: mutable collections}``, e.g.
      ``{"generator": {"batch_stats": ...}}``; an empty dict for a component without any.
    rng: a typed PRNG key (``jax.random.key``); per-step keys are ``fold_in(rng, step)``.
    tx: ``{optimizer_name: optax.GradientTransformation}``; static, not saved.
    ema_params: ``{component: params}``, an exponential moving average of those components'
      parameters (:func:`ema_update`), e.g. ``{"generator": ...}``; ``{}`` (the default) when
      no component is averaged. Saved and restored with the rest.
    hparams: ``{config key: value}``, hyperparameters that the train step reads from the state
      instead of the config (``state.hparams.get("vae.beta", beta)``): a population's swept
      values, one per member (:mod:`gen_models.population`, which also keeps each member's
      ``population.frozen_at`` here); ``{}`` (the default) for a single run, whose step uses
      the config's constants. Saved and restored with the rest.
  """

  step: jax.Array
  params: dict[str, PyTree]
  opt_state: dict[str, PyTree]
  model_state: dict[str, PyTree]
  rng: jax.Array
  tx: dict[str, optax.GradientTransformation] = flax.struct.field(pytree_node=False)
  ema_params: dict[str, PyTree] = flax.struct.field(default_factory=dict)
  hparams: dict[str, jax.Array] = flax.struct.field(default_factory=dict)

  @classmethod
  def create(
    cls,
    *,
    params: dict[str, PyTree],
    tx: dict[str, optax.GradientTransformation],
    rng: jax.Array,
    model_state: dict[str, PyTree] | None = None,
    opt_params: dict[str, PyTree] | None = None,
    ema: tuple[str, ...] = (),
  ) -> TrainState:
    """Builds step-0 state.

    Args:
      params: parameters by component.
      tx: optimizers by name. By default optimizer ``k`` updates ``params[k]``.
      rng: base key of the run.
      model_state: mutable collections by component (default: ``{}`` for each component).
      opt_params: for optimizers that do not map one-to-one to components, the parameter
        subtree each optimizer updates (same keys as ``tx``).
      ema: components whose parameters get a moving average, starting at their initial values.
    """
    opt_params = opt_params if opt_params is not None else {k: params[k] for k in tx}
    if set(opt_params) != set(tx):
      raise ValueError(f"opt_params keys {sorted(opt_params)} != tx keys {sorted(tx)}")
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state={k: tx[k].init(opt_params[k]) for k in tx},
      model_state=model_state if model_state is not None else {k: {} for k in params},
      rng=rng,
      tx=tx,
      ema_params={k: params[k] for k in ema},
    )

  def step_key(self) -> jax.Array:
    """The key of the current step: ``fold_in(rng, step)``; independent of sharding."""
    return jax.random.fold_in(self.rng, self.step)


def apply_gradients(
  tx: optax.GradientTransformation,
  params: PyTree,
  opt_state: PyTree,
  grads: PyTree,
  learning_rate: float | jax.Array = 1.0,
) -> tuple[PyTree, PyTree]:
  """One optax update, its updates times ``learning_rate``; returns ``(new_params,
  new_opt_state)``.

  The families build their optimizers with a unit learning rate (``optax.adam(1.0)``, or a
  schedule of peak 1) and pass the run's learning rate here, so that it can be a traced value
  (one per member of a population). For Adam the update is then ``(−1 · u) · lr``, bit for bit
  ``u · (−lr)`` of ``optax.adam(lr)``: a constant learning rate trains exactly as before.
  """
  updates, opt_state = tx.update(grads, opt_state, params)
  if not (isinstance(learning_rate, float) and learning_rate == 1.0):
    updates = jax.tree.map(lambda u: u * jnp.asarray(learning_rate, u.dtype), updates)
  return optax.apply_updates(params, updates), opt_state


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """``decay · ema + (1 − decay) · params``, leafwise (in the leaves' dtype)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def tree_all_finite(tree: PyTree) -> jax.Array:
  """A bool scalar: every floating leaf of ``tree`` is finite."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
