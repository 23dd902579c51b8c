"""WGAN-GP with DCGAN-style nets on CIFAR-10 32×32 (Gulrajani et al. 2017, Sec. 6).

Algorithm 1 hyper-parameters: Adam(1e-4, β1=0, β2=0.9), λ = 10, n_critic = 5, batch 64,
z ~ N(0, I₁₂₈), 200k generator steps in the paper (100k here by default).
Needs the prepared TFDS dataset (``--config.dataset.data_dir=DIR``) and, for the evaluation
(FID, IS, KID, precision/recall/density/coverage of 10,000 samples against the 10,000 test
images, every 10k steps and at the end), the converted FID Inception weights (see README);
``--config.eval.metrics=`` turns it off. ``:smoke`` is tiny and computes no metrics.
"""

from experiments.configs.common import parse_arg
from gen_models.models import wgan_gp


def get_config(arg: str | None = None, dataset: str = "cifar10"):
  args = parse_arg(arg, smoke=False)
  c = wgan_gp.default_config()
  c.dataset.name = dataset
  c.batch_size = 64
  c.gan.architecture = "dcgan"
  c.gan.latent_dim = 128
  c.gan.dcgan_dim = 64
  c.gan.unroll_critic = True  # Rolled, the step is far slower on CPU (docs/BENCHMARKS.md).
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.num_train_steps = 100_000
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.sample_every_steps = 1000
  c.checkpoint_every_steps = 5000
  c.eval.num_image_samples = 100
  c.eval.metrics = "fid,is,kid,prdc"
  c.eval.num_samples = 10_000
  if args["smoke"]:
    c.batch_size = 8
    c.gan.dcgan_dim = 8
    c.gan.latent_dim = 16
    c.gan.n_critic = 2
    c.num_train_steps = 3
    c.log_every_steps = 1
    c.sample_every_steps = 3
    c.checkpoint_every_steps = 2
    c.eval.num_image_samples = 16
    c.eval.metrics = ""
  return c
