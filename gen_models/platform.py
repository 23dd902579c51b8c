"""The platform a program is traced for: ``cpu``, ``gpu`` or ``tpu``.

Trace-time choices that depend on the hardware (``conv_impl="auto"``, ``population.execution
= "auto"``) read :func:`current`, not ``jax.default_backend()``: when a step is compiled ahead of
time for a chip this host does not have (:mod:`gen_models.aot`), the caller traces it inside
``with target("tpu"):`` and ``auto`` picks the TPU's forms, not the host's.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

PLATFORMS = ("cpu", "gpu", "tpu")
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("target", default=None)


def normalise(name: str) -> str:
  """A device's or backend's platform name as one of :data:`PLATFORMS` (``cuda``/``rocm`` →
  ``gpu``)."""
  name = name.lower()
  if name in ("cuda", "rocm", "gpu"):
    return "gpu"
  if name not in PLATFORMS:
    raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}")
  return name


def current() -> str:
  """The platform being traced for: the innermost :func:`target`, else JAX's default backend."""
  return _TARGET.get() or normalise(jax.default_backend())


@contextlib.contextmanager
def target(name: str):
  """Within the block, :func:`current` is ``name`` (``cpu``, ``gpu``/``cuda`` or ``tpu``)."""
  token = _TARGET.set(normalise(name))
  try:
    yield
  finally:
    _TARGET.reset(token)
