"""WGAN-GP with DCGAN-style nets on MNIST, zero-padded from 28×28 to 32×32.

The same nets and hyper-parameters as ``wgan_gp_cifar10.py`` with one channel; ``:smoke`` is tiny.
"""

from experiments.configs import wgan_gp_cifar10


def get_config(arg: str | None = None):
  c = wgan_gp_cifar10.get_config(arg, dataset="mnist")
  if not (arg or "").count("smoke"):
    c.num_train_steps = 20_000
  return c
