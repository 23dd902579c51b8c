"""gen_models: generative models in JAX/Flax with one TrainState and one sharded trainer."""

from gen_models.errors import UserError
from gen_models.train_state import TrainState

__all__ = ["TrainState", "UserError"]
