"""β-VAE (β = 4) on dSprites, the disentanglement_lib setting (Locatello et al. 2019).

Usage: ``--config=experiments/configs/beta_vae_dsprites.py[:smoke]``. Where each value is from:

* β = 4: Higgins et al. 2017 (their dSprites model, Fig. 6 and Table 1); also in the β grid
  {1, 2, 4, 6, 8, 16} of Locatello et al. 2019.
* Latent dimension 10: Higgins et al. 2017 (dSprites) and Locatello et al. 2019.
* Networks: disentanglement_lib's ``conv_encoder``/``deconv_decoder`` (Locatello et al. 2019),
  Bernoulli likelihood on logits. Higgins et al. 2017 used fully connected nets on dSprites
  (1200-1200 encoder, 1200×3 tanh decoder; disentanglement_lib ``fc_encoder``): that model,
  with its Adagrad, is ``beta_vae_dsprites_higgins.py``.
* Kernels Glorot uniform, biases zero (``vae.init=glorot_uniform``): the defaults of the
  TensorFlow 1 layers (``tf.layers.conv2d`` / ``dense`` / ``conv2d_transpose``) those nets are
  built from.
* Batch 64, Adam(1e-4, β1 = 0.9, β2 = 0.999, ε = 1e-8), 300k steps: disentanglement_lib
  ``unsupervised_study_v1/model_configs/shared.gin``. Not Higgins et al. 2017's: their dSprites
  model was trained with Adagrad, learning rate 1e-2 (their Table 1, as restated in
  ``beta_vae_dsprites_higgins.py``).

Data: ``dsprites_procedural`` (rendered in-process, no download); the original file with
``--config.dataset.name=dsprites --config.dataset.data_dir=DIR`` after
``python -m experiments.prepare_data dsprites``. dSprites has no held-out split: ``eval/*``
(ELBO, reconstruction, KL) is computed on ``eval.num_samples`` fixed images of the grid.
``:smoke`` trains the same nets for 3 steps on the 384-image smoke grid.
"""

from experiments.configs.common import parse_arg
from gen_models.models import vae


def get_config(arg: str | None = None, beta: float = 4.0):
  args = parse_arg(arg, smoke=False)
  c = vae.default_config()
  c.dataset.name = "dsprites_procedural"
  c.batch_size = 64
  c.vae.architecture = "conv"
  c.vae.init = "glorot_uniform"
  c.vae.latent_dim = 10
  c.vae.likelihood = "bernoulli"
  c.vae.objective = "beta"
  c.vae.beta = beta
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.num_train_steps = 300_000
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.sample_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.eval.num_samples = 1000
  c.eval.num_image_samples = 64
  if args["smoke"]:
    c.dataset.name = "dsprites_procedural_smoke"
    c.batch_size = 8
    c.num_train_steps = 3
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.sample_every_steps = 3
    c.checkpoint_every_steps = 2
    c.eval.num_samples = 16
    c.eval.num_image_samples = 16
  return c
