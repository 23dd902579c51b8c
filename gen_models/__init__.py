"""gen_models: generative models in JAX/Flax with one TrainState and one sharded trainer.

Importing the package does not import JAX (``TrainState`` is loaded on first use), so that
``gen_models.workdir`` and ``gen_models.report`` stay light.
"""

from gen_models.errors import UserError

__all__ = ["TrainState", "UserError"]


def __getattr__(name: str):
  if name == "TrainState":
    from gen_models.train_state import TrainState

    return TrainState
  raise AttributeError(f"module 'gen_models' has no attribute {name!r}")
