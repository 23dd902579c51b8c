"""RealNVP on the 2-D density-estimation sets with a known log-density (docs/FLOWS.md).

Usage: ``--config=experiments/configs/realnvp_toy.py[:DATASET][,smoke]`` where DATASET is
``8gaussians_wide`` (default), ``checkerboard`` or ``two_moons``; ``smoke`` is a seconds-long run.
Not a setting of the paper (which has no 2-D experiments): 10 affine couplings with alternating
masks, MLP s/t nets of 2 hidden layers of 256 ReLU units, ActNorm after each coupling, Adam(1e-3)
with a cosine decay to 0 over 20,000 steps, batch 256, no weight decay. On ``8gaussians_wide`` it
ends 0.061 nats above the true density's NLL (median of 8 seeds, 0.038–0.076; docs/FLOWS.md).
Every evaluation reports the held-out NLL of 20,000 fresh points and the true density's NLL on
them (``eval/nll_gap``).
"""

from experiments.configs.common import parse_arg
from gen_models.models import realnvp


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, variant="8gaussians_wide")
  c = realnvp.default_config()
  c.dataset.name = args["variant"]
  c.batch_size = 256
  c.flow.normalization = "actnorm"
  c.flow.num_couplings = 10
  c.flow.mlp_width = 256
  c.flow.mlp_depth = 2
  c.flow.l2 = 0.0
  c.flow.num_eval_points = 20_000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.cosine_decay_steps = 20_000
  c.num_train_steps = 20_000
  c.log_every_steps = 500
  c.eval_every_steps = 5000
  c.sample_every_steps = 20_000
  c.checkpoint_every_steps = 5000
  c.eval.num_samples = 1000
  if args["smoke"]:
    c.batch_size = 32
    c.flow.num_couplings = 4
    c.flow.mlp_width = 16
    c.flow.mlp_depth = 1
    c.optimizer.cosine_decay_steps = 0
    c.flow.num_eval_points = 256
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.sample_every_steps = 6
    c.checkpoint_every_steps = 3
    c.eval.num_samples = 64
  return c
