"""RealNVP on MNIST 28×28 (docs/FLOWS.md): the CIFAR-10 settings with one channel.

The dataset pads MNIST to 32×32; ``flow.crop = 2`` removes the padding before the flow, so that
bits/dim are over the 784 original pixels (FFJORD tabulates RealNVP at 1.06 bits/dim). Two
scales on 28×28 (28 → 14 after the squeeze). No horizontal flips (digits are not symmetric; the
paper has no MNIST run). 100,000 steps: our choice, without a source (neither the paper nor the
reference code gives one). ``:smoke`` is tiny (mock data in tests); ``:bfloat16`` as in
``realnvp_cifar10.py`` (the s/t nets in bfloat16).
"""

from experiments.configs import realnvp_cifar10


def get_config(arg: str | None = None):
  c = realnvp_cifar10.get_config(arg, dataset="mnist")
  c.flow.crop = 2
  if not (arg or "").count("smoke"):
    c.num_train_steps = 100_000  # No source (module docstring).
  else:  # One scale: the CIFAR-10 smoke runs the squeeze and factor-out; this one the crop.
    c.flow.num_scales = 1
  return c
