r"""PyTorch eager peers of the train steps, for ``experiments/bench/train.py``.

WGAN-GP, β-VAE and RealNVP on points (``flow``).

What a user would otherwise run: the same nets (same layer shapes, activations, normalisation
and parameter counts as ``gen_models``) and the same step, written the usual PyTorch way, in
eager mode. ``torch.compile`` cannot be the WGAN-GP peer: its aot_autograd rejects the double
backward of the gradient penalty ("does not currently support double backward").

Layouts are PyTorch's (NCHW). The DCGAN convs use ``padding=2`` (and ``output_padding=1`` for
the transposed ones), which give the same output sizes as our ``SAME`` padding; XLA's ``SAME``
pads the stride-2 5×5 convs (1, 2) instead of (2, 2) — the same work, shifted by a pixel.

Needs ``pip install '.[bench]'`` (``torch==2.13.0``, the CPU build).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
  layers, d = [], d_in
  for _ in range(depth):
    layers += [nn.Linear(d, width), nn.ReLU()]
    d = width
  return nn.Sequential(*layers, nn.Linear(d, d_out))


class DCGANGenerator(nn.Module):
  """``gen_models.models.wgan_gp.DCGANGenerator``: z → 4×4×4d → 8×8×2d → 16×16×d → 32×32×C."""

  def __init__(self, latent: int, dim: int, channels: int):
    super().__init__()
    self.dim = dim
    self.fc = nn.Linear(latent, 4 * 4 * 4 * dim)
    self.bn0 = nn.BatchNorm1d(4 * 4 * 4 * dim, momentum=0.1)

    def up(c_in, c_out):
      return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)

    self.up1, self.bn1 = up(4 * dim, 2 * dim), nn.BatchNorm2d(2 * dim, momentum=0.1)
    self.up2, self.bn2 = up(2 * dim, dim), nn.BatchNorm2d(dim, momentum=0.1)
    self.up3 = up(dim, channels)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    x = torch.relu(self.bn0(self.fc(z))).view(-1, 4 * self.dim, 4, 4)
    x = torch.relu(self.bn1(self.up1(x)))
    x = torch.relu(self.bn2(self.up2(x)))
    return torch.tanh(self.up3(x))


class DCGANCritic(nn.Module):
  """``gen_models.models.wgan_gp.DCGANCritic``: three 5×5 stride-2 convs, LeakyReLU(0.2), dense."""

  def __init__(self, dim: int, channels: int):
    super().__init__()
    self.convs = nn.ModuleList(
      nn.Conv2d(c_in, c_out, 5, stride=2, padding=2)
      for c_in, c_out in ((channels, dim), (dim, 2 * dim), (2 * dim, 4 * dim))
    )
    self.fc = nn.Linear(4 * 4 * 4 * dim, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv in self.convs:
      x = nn.functional.leaky_relu(conv(x), 0.2)
    return self.fc(x.flatten(1))


def _up(x: torch.Tensor) -> torch.Tensor:
  return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
  """``gen_models.nn.ResidualBlock``: pre-activation block, ``resample`` None, "up" or "down",
  batch norm or none; 1×1 shortcut (after up-sampling / before mean-pooling) or the identity."""

  def __init__(self, c_in: int, c_out: int, resample: str | None, normalize: bool):
    super().__init__()
    self.resample = resample
    mid = c_in if resample == "down" else c_out
    norm = lambda c: nn.BatchNorm2d(c, momentum=0.1) if normalize else nn.Identity()
    self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, mid, 3, padding=1)
    self.norm2, self.conv2 = norm(mid), nn.Conv2d(mid, c_out, 3, padding=1)
    self.shortcut = nn.Conv2d(c_in, c_out, 1) if resample or c_in != c_out else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.resample == "up":
      s = self.shortcut(_up(x))
    elif self.resample == "down":
      s = nn.functional.avg_pool2d(self.shortcut(x), 2)
    else:
      s = x if self.shortcut is None else self.shortcut(x)
    h = torch.relu(self.norm1(x))
    h = self.conv1(_up(h) if self.resample == "up" else h)
    h = self.conv2(torch.relu(self.norm2(h)))
    return s + (nn.functional.avg_pool2d(h, 2) if self.resample == "down" else h)


class ResNetGenerator(nn.Module):
  """``gen_models.models.wgan_gp_resnet.ResNetGenerator``: z → 4×4×d → 3 up blocks → BN, ReLU,
  3×3 conv → tanh."""

  def __init__(self, latent: int, dim: int, channels: int):
    super().__init__()
    self.dim = dim
    self.fc = nn.Linear(latent, 4 * 4 * dim)
    self.blocks = nn.Sequential(*(ResBlock(dim, dim, "up", True) for _ in range(3)))
    self.bn = nn.BatchNorm2d(dim, momentum=0.1)
    self.out = nn.Conv2d(dim, channels, 3, padding=1)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.fc(z).view(-1, self.dim, 4, 4))
    return torch.tanh(self.out(torch.relu(self.bn(x))))


class ResNetCritic(nn.Module):
  """``gen_models.models.wgan_gp_resnet.ResNetCritic`` (unconditional): optimised block, down
  block, two plain blocks, ReLU, global mean pool, linear."""

  def __init__(self, dim: int, channels: int):
    super().__init__()
    self.shortcut = nn.Conv2d(channels, dim, 1)
    self.conv1 = nn.Conv2d(channels, dim, 3, padding=1)
    self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
    blocks = [ResBlock(dim, dim, "down", False)]
    blocks += [ResBlock(dim, dim, None, False) for _ in range(2)]
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(dim, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pool = lambda t: nn.functional.avg_pool2d(t, 2)
    h = pool(self.conv2(torch.relu(self.conv1(x))))
    x = self.blocks(self.shortcut(pool(x)) + h)
    return self.fc(torch.relu(x).mean(dim=(2, 3)))


class WGANGP:
  """One WGAN-GP train step as ``gen_models.models.wgan_gp.train_step``: ``n_critic`` critic
  updates ``L_D = E D(x̃) − E D(x) + λ E(‖∇D(x̂)‖ − 1)²`` (one real batch each), then one
  generator update ``L_G = −E D(G(z))``; Adam for both. With the ResNet nets also the
  dequantisation of the real images and the generator's own batch size (the learning-rate
  decay, a scalar per step, is left out). Always float32: on the CPU, bfloat16 autocast made one
  ResNet step take minutes (2026-11-26, batch 8, one thread)."""

  def __init__(self, config, example_shape: tuple[int, ...], seed: int = 0):
    torch.manual_seed(seed)
    gan, opt = config.gan, config.optimizer
    self.latent, self.gp_weight = gan.latent_dim, gan.gp_weight
    if gan.architecture == "mlp":
      d = example_shape[0]
      self.gen = _mlp(gan.latent_dim, gan.mlp_width, gan.mlp_depth, d)
      self.critic = _mlp(d, gan.mlp_width, gan.mlp_depth, 1)
    elif gan.architecture == "resnet":
      self.gen = ResNetGenerator(gan.latent_dim, gan.resnet_dim, example_shape[-1])
      self.critic = ResNetCritic(gan.resnet_dim, example_shape[-1])
    else:
      self.gen = DCGANGenerator(gan.latent_dim, gan.dcgan_dim, example_shape[-1])
      self.critic = DCGANCritic(gan.dcgan_dim, example_shape[-1])
    self.gen_batch = gan.get("generator_batch_size", 0)
    self.dequantize = gan.get("dequantize", False)
    betas = (opt.b1, opt.b2)
    self.g_opt = torch.optim.Adam(self.gen.parameters(), lr=opt.learning_rate, betas=betas)
    self.c_opt = torch.optim.Adam(self.critic.parameters(), lr=opt.learning_rate, betas=betas)

  def num_params(self) -> tuple[int, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())
    return count(self.gen), count(self.critic)

  def step(self, batch: torch.Tensor) -> dict[str, float]:
    """``batch``: real data ``(n_critic, B, *example_shape)`` in PyTorch's layout."""
    n_critic, b = batch.shape[:2]
    for real in batch:
      if self.dequantize:  # k/127.5 − 1 → (k + u)/128 − 1.
        real = (torch.round((real + 1) * 127.5) + torch.rand_like(real)) / 128 - 1
      with torch.no_grad():
        fake = self.gen(torch.randn(b, self.latent))
      eps = torch.rand(b, *([1] * (real.dim() - 1)))
      x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
      (grads,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
      norms = torch.sqrt(grads.flatten(1).square().sum(1) + 1e-12)
      gp = (norms - 1).square().mean()
      loss = self.critic(fake).mean() - self.critic(real).mean() + self.gp_weight * gp
      self.c_opt.zero_grad(set_to_none=True)
      loss.backward()
      self.c_opt.step()
    g_loss = -self.critic(self.gen(torch.randn(self.gen_batch or b, self.latent))).mean()
    self.g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    self.g_opt.step()
    return {"critic_loss": loss.item(), "generator_loss": g_loss.item()}


class VAEEncoder(nn.Module):
  """``gen_models.models.vae.ConvEncoder`` ("conv"): 32 k4, 32 k4, 64 k2, 64 k2 (stride 2,
  ReLU) → dense 256 → means and log-variances."""

  def __init__(self, channels: int, size: int, latent: int):
    super().__init__()
    specs = ((channels, 32, 4), (32, 32, 4), (32, 64, 2), (64, 64, 2))
    # padding 1 for k4 and 0 for k2 give XLA's SAME sizes (H/2) for even H.
    self.convs = nn.ModuleList(nn.Conv2d(i, o, k, 2, (k - 2) // 2) for i, o, k in specs)
    self.fc = nn.Linear(64 * (size // 16) ** 2, 256)
    self.means, self.log_var = nn.Linear(256, latent), nn.Linear(256, latent)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for conv in self.convs:
      x = torch.relu(conv(x))
    h = torch.relu(self.fc(x.flatten(1)))
    return self.means(h), self.log_var(h)


class VAEDecoder(nn.Module):
  """``gen_models.models.vae.ConvDecoder`` ("conv"): dense 256 → 1024 → 4×4×64 → transposed
  convs 64, 32, 32, C (k4 s2, ReLU between) → logits."""

  def __init__(self, channels: int, size: int, latent: int):
    super().__init__()
    self.start = size // 16
    self.fc1, self.fc2 = nn.Linear(latent, 256), nn.Linear(256, 64 * self.start**2)
    specs = ((64, 64), (64, 32), (32, 32), (32, channels))
    self.ups = nn.ModuleList(nn.ConvTranspose2d(i, o, 4, 2, 1) for i, o in specs)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = torch.relu(self.fc2(torch.relu(self.fc1(z))))
    x = h.view(-1, 64, self.start, self.start)
    for i, up in enumerate(self.ups):
      x = up(x)
      x = torch.relu(x) if i < len(self.ups) - 1 else x
    return x


class BetaVAE:
  """One β-VAE train step as ``gen_models.models.vae.train_step`` ("conv" nets, Bernoulli
  likelihood, ``L = R + β·KL``): one Adam update of encoder and decoder."""

  def __init__(self, config, example_shape: tuple[int, ...], seed: int = 0):
    torch.manual_seed(seed)
    vae, opt = config.vae, config.optimizer
    size, channels = example_shape[0], example_shape[2]
    self.beta = vae.beta
    self.encoder = VAEEncoder(channels, size, vae.latent_dim)
    self.decoder = VAEDecoder(channels, size, vae.latent_dim)
    params = [*self.encoder.parameters(), *self.decoder.parameters()]
    self.opt = torch.optim.Adam(params, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)

  def num_params(self) -> tuple[int, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())
    return count(self.encoder), count(self.decoder)

  def step(self, batch: torch.Tensor) -> dict[str, float]:
    """``batch``: ``(1, B, C, H, W)`` in [0, 1]."""
    (x,) = batch
    mu, log_var = self.encoder(x)
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
    logits = self.decoder(z)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    reconstruction = bce.flatten(1).sum(1).mean()
    kl = (0.5 * (log_var.exp() + mu.square() - 1.0 - log_var)).sum(1).mean()
    loss = reconstruction + self.beta * kl
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.item(), "kl": kl.item()}


class _Coupling(nn.Module):
  """``gen_models.models.realnvp.AffineCoupling`` with a vector mask: MLP on ``b⊙x`` → (ŝ, t),
  ``s = scale·tanh(ŝ)``, ``y = b⊙x + (1−b)⊙(x·exp(s) + t)``; log-det ``Σ (1−b)⊙s``."""

  def __init__(self, d: int, parity: int, width: int, depth: int):
    super().__init__()
    self.register_buffer("mask", (torch.arange(d) % 2 == parity).float())
    self.net = _mlp(d, width, depth, 2 * d)
    self.scale = nn.Parameter(torch.ones(d))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = self.mask
    h = self.net(b * x)
    d = x.shape[1]
    s = (1 - b) * self.scale * torch.tanh(h[:, :d])
    y = b * x + (1 - b) * (x * torch.exp(s) + h[:, d:])
    return y, s.sum(1)


class _ActNorm(nn.Module):
  def __init__(self, d: int):
    super().__init__()
    self.log_scale = nn.Parameter(torch.zeros(d))
    self.bias = nn.Parameter(torch.zeros(d))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ld = self.log_scale.sum().expand(x.shape[0])
    return x * torch.exp(self.log_scale) + self.bias, ld


class RealNVP:
  """One RealNVP train step on points as ``gen_models.models.realnvp.train_step`` (vector
  couplings with MLP s/t nets, ActNorm after each, loss ``−mean log p(x)``, Adam)."""

  def __init__(self, config, example_shape: tuple[int, ...], seed: int = 0):
    torch.manual_seed(seed)
    f, opt = config.flow, config.optimizer
    d = example_shape[0]
    layers = []
    for k in range(f.num_couplings):
      layers.append(_Coupling(d, k % 2, f.mlp_width, f.mlp_depth))
      if f.normalization == "actnorm":
        layers.append(_ActNorm(d))
    self.flow = nn.ModuleList(layers)
    self.opt = torch.optim.Adam(
      self.flow.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps
    )

  def num_params(self) -> int:
    return sum(p.numel() for p in self.flow.parameters())

  def step(self, batch: torch.Tensor) -> dict[str, float]:
    """``batch``: ``(1, B, d)`` points."""
    (x,) = batch
    log_det = torch.zeros(x.shape[0])
    for layer in self.flow:
      x, ld = layer(x)
      log_det = log_det + ld
    log_p = -0.5 * x.square().sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi) + log_det
    loss = -log_p.mean()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return {"loss": loss.item()}
