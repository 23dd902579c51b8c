"""WGAN-GP with the paper's ResNet nets on CIFAR-10 32×32 (Gulrajani et al. 2017, Table 3).

The settings of ``gan_cifar_resnet.py`` (github.com/igul222/improved_wgan_training): both nets
128 channels wide, z ~ N(0, I₁₂₈), λ = 10, n_critic = 5, Adam(2e-4, β1 = 0, β2 = 0.9) for both
nets with the learning rate decayed linearly to 0 over 100k generator steps, critic batch 64,
generator batch 128, dequantised real images, the generator's batch-norm statistics over halves
of each batch (the reference's two GPUs) and samples made with batch statistics in groups of
100 (the reference's generator is always in training mode). The paper's Inception Scores: 7.86 ± .07
(unsupervised, this config) and 8.42 ± .10 (``:conditional``, AC-GAN with class-conditional
batch norm; needs the dataset's labels). No EMA (``--config.gan.ema_decay=0.999`` turns it on).

Evaluation: FID, IS, KID, precision/recall/density/coverage of 10,000 samples every 10k steps,
and of 50,000 samples at the end (the paper's protocol is the Inception Score over 10 splits of
50,000 samples; the paper reports no FID: our FID, against the 10,000 test images, and the other
metrics are extras); needs the converted FID Inception weights (README).
``:smoke`` is tiny and computes no metrics; ``:bfloat16`` computes the nets in bfloat16
(GPU/TPU). Arguments combine: ``:conditional,smoke``.
"""

from experiments.configs.common import parse_arg
from gen_models.models import wgan_gp


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, conditional=False, bfloat16=False)
  c = wgan_gp.default_config()
  c.dataset.name = "cifar10"
  c.batch_size = 64  # The critic's; the generator's is 128.
  c.gan.architecture = "resnet"
  c.gan.resnet_dim = 128
  c.gan.latent_dim = 128
  c.gan.n_critic = 5
  c.gan.gp_weight = 10.0
  c.gan.generator_batch_size = 128
  c.gan.dequantize = True
  c.gan.unroll_critic = True  # Rolled, convolutions in the loop are far slower on XLA:CPU.
  c.gan.ema_decay = 0.0
  # The reference ran every batch as two halves on two GPUs: its generator's batch norm saw 32 of
  # the critic's 64 fakes and 64 of the generator update's 128; and that batch norm is always in
  # training mode, also for the Inception-score samples, drawn in batches of 100.
  c.gan.bn_groups = 2
  c.gan.sample_bn_chunk = 100
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.decay_steps = 100_000
  c.num_train_steps = 100_000
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.sample_every_steps = 1000
  c.checkpoint_every_steps = 5000
  c.eval.num_image_samples = 100
  c.eval.metrics = "fid,is,kid,prdc"
  c.eval.num_samples = 10_000
  c.eval.final_num_samples = 50_000
  # Samples → Inception pixels as the reference's get_inception_score: ⌊(x + 1)·255.99/2⌋.
  c.eval.quantization = "wgan_gp"
  if args["conditional"]:
    c.gan.conditional = True
    c.gan.num_classes = 10
    c.gan.acgan_scale = 1.0
    c.gan.acgan_scale_g = 0.1
    c.dataset.labels = True  # Batches {"image", "label"}; the labels of CIFAR-10.
  if args["bfloat16"]:
    c.gan.compute_dtype = "bfloat16"
  if args["smoke"]:
    c.batch_size = 8
    c.gan.resnet_dim = 8
    c.gan.latent_dim = 16
    c.gan.n_critic = 2
    c.gan.unroll_critic = False  # One loop body to compile: the smoke test's time is compiling.
    c.gan.generator_batch_size = 16
    c.gan.sample_bn_chunk = 8  # Two groups of the 16-image grid.
    c.optimizer.decay_steps = 3
    c.num_train_steps = 3
    c.log_every_steps = 1
    c.sample_every_steps = 3
    c.checkpoint_every_steps = 3  # Once, at the end: a save of ~200 arrays takes seconds.
    c.eval.num_image_samples = 16
    c.eval.metrics = ""
    c.eval.final_num_samples = 0
  return c
