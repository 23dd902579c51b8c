"""AnnealedVAE on dSprites: the capacity objective of Burgess et al. 2018 with C_max = 25.

``L = R + γ·|KL − C(t)|``, ``C(t) = min(C_max, C_max·t/T)`` with γ = 1000, T = 100k steps and
C_max = 25 nats: Burgess et al. 2018 (dSprites: C from 0 to 25 over 100k iterations, γ = 1000)
and disentanglement_lib's ``annealed_vae`` (γ = 1000, ``iteration_threshold`` = 100k, C_max in
{5, 10, 25, 50, 75, 100}). Networks, batch, optimizer, steps and data as
``beta_vae_dsprites.py`` (disentanglement_lib's; Burgess et al. used their own conv net, our
``vae.architecture=burgess``, and Adam 5e-4). ``:smoke`` anneals over 4 steps.
"""

from experiments.configs import beta_vae_dsprites


def get_config(arg: str | None = None):
  c = beta_vae_dsprites.get_config(arg)
  c.vae.objective = "capacity"
  c.vae.beta = 1.0  # Unused by the capacity objective.
  c.vae.gamma = 1000.0
  c.vae.c_max = 25.0
  c.vae.capacity_steps = 100_000
  if "smoke" in (arg or "").split(","):
    c.vae.capacity_steps = 4
  return c
