"""β-VAE (β = 4) on dSprites with Higgins et al. 2017's own fully connected model and optimizer.

Usage: ``--config=experiments/configs/beta_vae_dsprites_higgins.py[:smoke]``. Where each value is
from (Higgins et al. 2017, "β-VAE: Learning basic visual concepts with a constrained variational
framework", ICLR; its appendix Table 1, row 1 as disentanglement_lib cites it):

* Networks, ``vae.architecture=fc``: encoder 4096 (the flattened 64×64 image) → 1200 → 1200
  (ReLU) → 10 means and 10 log-variances; decoder 10 → 1200 → 1200 → 1200 (tanh) → 4096
  logits, Bernoulli likelihood. As disentanglement_lib writes the paper's row 1 of Table 1
  (``fc_encoder`` / ``fc_decoder`` in disentanglement_lib/methods/shared/architectures.py).
* Latent dimension 10, β = 4: the paper (dSprites, Fig. 6 and Table 1).
* Adagrad with learning rate 1e-2: the paper's Table 1 as restated by others (disentanglement_lib's
  ``fc_encoder`` cites the row; the third-party replications found here use
  ``tf.train.AdagradOptimizer(1e-2)``); the paper's PDF itself was not at hand in this session.
  Initial accumulator 0.1 and ε = 0: the paper names no values; TensorFlow 1's
  ``tf.train.AdagradOptimizer`` defaults (``initial_accumulator_value=0.1``, and its kernel
  ``ApplyAdagrad`` divides by ``sqrt(accum)`` with no ε: tensorflow/core/kernels/
  training_ops.cc). optax's ``adagrad`` has the same 0.1 and ε = 1e-7 under the root; with the
  accumulator ≥ 0.1 that changes an update by at most 5e-7 relative.
* Kernels Glorot uniform, biases zero (``vae.init=glorot_uniform``): the defaults of the
  TensorFlow layers of disentanglement_lib's ``fc_encoder`` / ``fc_decoder``; the paper does not
  name its initialiser.
* Batch 64 and 300k steps: not stated for this model in the sources read here; disentanglement_lib
  ``unsupervised_study_v1/model_configs/shared.gin``'s values, as ``beta_vae_dsprites.py``.

Data as ``beta_vae_dsprites.py`` (``dsprites_procedural``, rendered in-process). ``:smoke`` trains
the same nets for 3 steps on the 384-image smoke grid.
"""

from experiments.configs import beta_vae_dsprites


def get_config(arg: str | None = None):
  c = beta_vae_dsprites.get_config(arg, beta=4.0)
  c.vae.architecture = "fc"
  c.vae.init = "glorot_uniform"
  c.optimizer.name = "adagrad"
  c.optimizer.learning_rate = 1e-2
  c.optimizer.initial_accumulator_value = 0.1
  c.optimizer.eps = 0.0
  return c
