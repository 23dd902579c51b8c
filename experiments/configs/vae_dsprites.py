"""The plain VAE (β = 1) on dSprites: ``beta_vae_dsprites.py`` with β = 1.

β = 1 is the VAE of Kingma & Welling 2014, the baseline of Higgins et al. 2017 (Fig. 6) and the
smallest β of Locatello et al. 2019. Everything else, ``:smoke`` included, as in
``beta_vae_dsprites.py``.
"""

from experiments.configs import beta_vae_dsprites


def get_config(arg: str | None = None):
  return beta_vae_dsprites.get_config(arg, beta=1.0)
