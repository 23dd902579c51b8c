"""WGAN-GP on the 2-D toy sets of Gulrajani et al. 2017 (Sec. 5.1).

Usage: ``--config=experiments/configs/wgan_gp_toy.py[:DATASET][,smoke]`` where DATASET is
``8gaussians`` (default), ``25gaussians`` or ``swissroll``; ``smoke`` is a seconds-long run.
The paper's toy setting: MLPs of 3 hidden ReLU layers, n_critic = 5, batch 256, Adam(1e-4,
β1=0.5, β2=0.9), z ~ N(0, I₂) and a gradient-penalty weight λ = 0.1 (the authors' toy runs use
this smaller λ rather than the λ = 10 of their image experiments). We use 256 hidden units
instead of 512 and 2,000 generator steps so that the default run takes about 2 minutes on a
2-core CPU; it reaches an exact W1 within 1.1× of the noise floor (README: 1.07).
"""

from experiments.configs.common import parse_arg
from gen_models.models import wgan_gp


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, variant="8gaussians")
  c = wgan_gp.default_config()
  c.dataset.name = args["variant"]
  c.batch_size = 256
  c.gan.architecture = "mlp"
  c.gan.latent_dim = 2
  c.gan.mlp_width = 256
  c.gan.mlp_depth = 3
  c.gan.gp_weight = 0.1
  c.gan.unroll_critic = True  # 1.14× faster on CPU (experiments/bench/train.py); cheap compile.
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.5
  c.optimizer.b2 = 0.9
  c.num_train_steps = 2000
  c.log_every_steps = 200
  c.eval_every_steps = 500
  c.sample_every_steps = 500
  c.checkpoint_every_steps = 500
  c.eval.num_samples = 1000
  if args["smoke"]:
    c.batch_size = 32
    c.gan.mlp_width = 32
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.sample_every_steps = 6
    c.checkpoint_every_steps = 3
    c.eval.num_samples = 64
  return c
