"""RealNVP on CIFAR-10 32×32 with the paper's settings (Dinh et al. 2017, §4.1; docs/FLOWS.md).

Multi-scale flow with 2 scales ("downscale only once"), ResNet s/t nets of 8 blocks of 64
features, batch norm after each coupling, Adam(1e-3), batch 64, L2 5e-5 on the weights, the
logit transform with α = 0.05 and uniform dequantisation; loss and logs in bits/dim. The paper
reports 3.49 bits/dim on the test set. Needs the prepared TFDS dataset
(``--config.dataset.data_dir=DIR``). ``:smoke`` is tiny (mock data in tests).
"""

from experiments.configs.common import parse_arg
from gen_models.models import realnvp


def get_config(arg: str | None = None, dataset: str = "cifar10"):
  args = parse_arg(arg, smoke=False)
  c = realnvp.default_config()
  c.dataset.name = dataset
  c.batch_size = 64
  c.flow.normalization = "batchnorm"
  c.flow.num_scales = 2
  c.flow.resnet_blocks = 8
  c.flow.resnet_features = 64
  c.flow.alpha = 0.05
  c.flow.l2 = 5e-5
  c.flow.num_eval_points = 10_000  # The whole test set.
  c.optimizer.learning_rate = 1e-3
  c.num_train_steps = 500_000
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.sample_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.eval.num_image_samples = 100
  if args["smoke"]:
    c.batch_size = 8
    c.flow.resnet_blocks = 0
    c.flow.resnet_features = 4
    c.flow.num_eval_points = 8
    c.num_train_steps = 3
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.sample_every_steps = 3
    c.checkpoint_every_steps = 2
    c.eval.num_image_samples = 4
  return c
