"""RealNVP on CIFAR-10 32×32 as its authors ran it (Dinh et al. 2017, §4.1; docs/FLOWS.md).

Multi-scale flow with 2 scales ("downscale only once"), ResNet s/t nets of 8 blocks of 64
features, Adam(1e-3), batch 64, the logit transform with α = 0.05 and uniform dequantisation;
the loss in nats per image (the reference code's), logs also in bits/dim. The paper reports 3.49
bits/dim on the test set.

Where the paper leaves it open, the values are the reference code's (tensorflow/models
``research/real_nvp/real_nvp_multiscale_dataset.py`` and ``real_nvp_utils.py``, read for the
facts): weight-normed s/t convs with batch norm inside, 1×1 skip convs and a 1×1 output conv;
the s/t input ``[relu(2·bn(b⊙x)), relu(−2·bn(b⊙x)), b]``; ``y = (x + t)·exp(s)``; batch norm of
the transformed half only, no scale/offset (``transformed_batchnorm``); widths doubled per scale
and in the channel couplings (the code's ``dim · 2^scale``, ``2·dim``; the paper says only "64
feature maps"); the code's squeeze layout and factor-out (channel-major squeeze; the pixels
(0,1), (1,0) of each 2×2 patch factored out); L2 5e-5 on the weight-norm scales and the
checkerboard couplings' tanh scales (the code's ``magnitude`` and ``rescaling_scale``, not every
weight), added to the NLL in nats per image as the code's ``cost + l2_coeff · l2_reg``; that
gradient clipped to a global norm of 100 (``tf.clip_by_global_norm``). Horizontal
flips of the training images (the paper, §4.1; the code flips CelebA and LSUN, it has no
CIFAR-10 pipeline). What still differs is listed in docs/FLOWS.md.

Steps: neither the paper nor the code gives a number of training steps (the code's
``--train_steps`` has no meaningful default); 500,000 (MNIST 100,000) is our choice, without a
source. Needs the prepared TFDS dataset (``--config.dataset.data_dir=DIR``). ``:smoke`` is tiny
(mock data in tests). ``:bfloat16`` computes the s/t nets in bfloat16 (GPU/TPU; the coupling
arithmetic, log-determinants and bits/dim stay float32: ``flow.compute_dtype``, docs/FLOWS.md).
Arguments combine: ``:bfloat16,smoke``.
"""

from experiments.configs.common import parse_arg
from gen_models.models import realnvp


def get_config(arg: str | None = None, dataset: str = "cifar10"):
  args = parse_arg(arg, smoke=False, bfloat16=False)
  c = realnvp.default_config()
  c.dataset.name = dataset
  c.batch_size = 64
  c.flow.num_scales = 2
  c.flow.resnet_blocks = 8
  c.flow.resnet_features = 64
  c.flow.alpha = 0.05
  c.flow.l2 = 5e-5
  c.flow.l2_params = "scales"
  c.flow.normalization = "transformed_batchnorm"
  c.flow.weight_norm = True
  c.flow.st_batch_norm = True
  c.flow.skip_convs = True
  c.flow.st_out_kernel = 1
  c.flow.st_input = "concat_relu"
  c.flow.shift_first = True
  c.flow.double_features = True
  c.flow.squeeze_layout = "reference"
  c.optimizer.clip_global_norm = 100.0
  c.dataset.random_flip = dataset == "cifar10"
  c.flow.num_eval_points = 10_000  # The whole test set.
  c.optimizer.learning_rate = 1e-3
  c.num_train_steps = 500_000  # No source (module docstring).
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.sample_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.eval.num_image_samples = 100
  if args["bfloat16"]:
    c.flow.compute_dtype = "bfloat16"
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
