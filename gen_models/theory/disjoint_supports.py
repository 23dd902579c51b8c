r"""Parallel segments (Arjovsky, Chintala & Bottou 2017, Example 1).

P is uniform on {0} × [0, 1] and Q_θ uniform on {θ} × [0, 1]. In closed form::

    KL(P ‖ Q_θ) = KL(Q_θ ‖ P) = +∞ (θ ≠ 0),   0 (θ = 0)
    JSD(P, Q_θ) = log 2 (θ ≠ 0),             0 (θ = 0)
    W1(P, Q_θ)  = |θ|

(for W1: moving every point horizontally by θ costs |θ|, and no plan is cheaper because every
unit of mass must cross the horizontal gap |θ|). Only W1 is continuous in θ and has a useful
derivative: JSD is flat at log 2 on both sides, its gradient in θ is 0, and KL is infinite.

From samples, through the library: n points of each (independent uniforms on the segment), KL
and JSD of their histograms on cells of ``cell_width`` × 1/``y_bins`` (``kl_discrete``,
``jsd_discrete``: the segments fall in different columns of cells once |θ| ≥ cell_width), and
the exact W1 of the two point sets (``wasserstein1``), which is |θ| plus the sampling noise of
the vertical coordinates (its value at θ = 0, the noise floor).
"""

from __future__ import annotations

import math

import numpy as np

from gen_models import divergences


def closed_form(theta: np.ndarray) -> dict[str, np.ndarray]:
  """KL, JSD (nats) and W1 between P and Q_θ for ``theta (T,)``, each ``(T,)``."""
  theta = np.asarray(theta, np.float64)
  zero = theta == 0
  return {
    "kl": np.where(zero, 0.0, np.inf),
    "jsd": np.where(zero, 0.0, math.log(2.0)),
    "w1": np.abs(theta),
  }


def segment_samples(rng: np.random.Generator, theta: float, n: int) -> np.ndarray:
  """``(n, 2)`` points uniform on {θ} × [0, 1]."""
  return np.stack([np.full(n, theta), rng.random(n)], axis=1)


def histogram(points: np.ndarray, cell_width: float, y_bins: int, x_max: float) -> np.ndarray:
  """Probabilities ``(X, y_bins)`` of ``points (n, 2)`` in cells of ``cell_width`` × 1/y_bins.

  The cells' centres in x are the multiples of ``cell_width`` in ``[-x_max, x_max]``.
  """
  half = round(x_max / cell_width)
  x_edges = (np.arange(-half, half + 2) - 0.5) * cell_width
  counts, _, _ = np.histogram2d(
    points[:, 0], points[:, 1], [x_edges, np.linspace(0, 1, y_bins + 1)]
  )
  if counts.sum() != len(points):
    raise ValueError("points outside the histogram's range")
  return counts / len(points)


def run(
  *,
  thetas: np.ndarray | None = None,
  num_samples: int = 1000,
  cell_width: float = 0.01,
  y_bins: int = 10,
  seed: int = 0,
) -> dict:
  """KL, JSD and W1 between P and Q_θ for each θ, from samples and in closed form.

  Args:
    thetas: ``(T,)`` offsets (default 41 values in [−1, 1], step 0.05, 0 included).
    num_samples: points drawn from each distribution per θ.
    cell_width, y_bins: the histogram cells of the sample KL/JSD.
    seed: the samples' seed (one ``numpy`` generator for the whole run).

  Returns:
    A JSON-ready dict: ``theta`` and, per θ, ``kl_samples``, ``jsd_samples``, ``w1_samples``
    and the closed forms ``kl``, ``jsd``, ``w1`` (``Infinity`` for an infinite KL), and a
    ``summary`` of the comparison.
  """
  thetas = np.linspace(-1.0, 1.0, 41) if thetas is None else np.asarray(thetas, np.float64)
  rng = np.random.default_rng(seed)
  x_max = float(np.max(np.abs(thetas)))
  kl, jsd, w1 = [], [], []
  for theta in thetas:
    p = segment_samples(rng, 0.0, num_samples)
    q = segment_samples(rng, float(theta), num_samples)
    hp, hq = (histogram(s, cell_width, y_bins, x_max) for s in (p, q))
    kl.append(divergences.kl_discrete(hp.ravel(), hq.ravel()))
    jsd.append(divergences.jsd_discrete(hp.ravel(), hq.ravel()))
    w1.append(divergences.wasserstein1(p, q))
  exact = closed_form(thetas)
  kl, jsd, w1 = np.array(kl), np.array(jsd), np.array(w1)
  nonzero = np.abs(thetas) >= cell_width
  summary = {
    "jsd_samples_at_theta_0": float(jsd[thetas == 0][0]) if np.any(thetas == 0) else None,
    "w1_samples_at_theta_0": float(w1[thetas == 0][0]) if np.any(thetas == 0) else None,
    "max_abs_jsd_minus_log2_for_theta_ne_0": float(np.max(np.abs(jsd[nonzero] - math.log(2)))),
    "kl_samples_infinite_for_all_theta_ne_0": bool(np.all(np.isinf(kl[nonzero]))),
    "max_abs_w1_samples_minus_abs_theta": float(np.max(np.abs(w1 - np.abs(thetas)))),
    "w1_slope_fit": (
      float(np.polyfit(np.abs(thetas), w1, 1)[0]) if len(np.unique(np.abs(thetas))) > 1 else None
    ),
  }
  return {
    "settings": {
      "num_samples": num_samples,
      "cell_width": cell_width,
      "y_bins": y_bins,
      "seed": seed,
    },
    "summary": summary,
    "theta": thetas.tolist(),
    "kl_samples": kl.tolist(),
    "jsd_samples": jsd.tolist(),
    "w1_samples": w1.tolist(),
    **{k: v.tolist() for k, v in exact.items()},
  }


def plot(results: dict, path: str, example_theta: float = 0.5) -> str:
  """Left: samples of P and Q_θ for one θ; right: KL, JSD and W1 against θ."""
  from gen_models.theory import plotting

  theta = np.asarray(results["theta"])
  fig = plotting.new_figure(11.0, 4.2)
  left, right = fig.subplots(1, 2, width_ratios=[1, 2.2])
  rng = np.random.default_rng(0)
  for t, color, name in ((0.0, "tab:orange", "P"), (example_theta, "tab:blue", "Q_θ")):
    pts = segment_samples(rng, t, 60)
    left.scatter(
      pts[:, 0], pts[:, 1], s=8, color=color, label=f"{name}: uniform on {{{t}}} × [0, 1]"
    )
  left.annotate(
    "", xy=(example_theta, 0.5), xytext=(0, 0.5), arrowprops=dict(arrowstyle="<->", color="k")
  )
  left.text(example_theta / 2, 0.53, f"θ = {example_theta}", ha="center")
  left.set(xlim=(-0.5, 1.0), ylim=(-0.1, 1.3), xlabel="$x_1$", ylabel="$x_2$")
  left.set_title("disjoint supports (Arjovsky et al. 2017, Ex. 1)")
  left.legend(fontsize="small", loc="upper left")

  top = 1.25
  fine = np.linspace(theta.min(), theta.max(), 801)
  right.plot(fine, np.abs(fine), "-", color="tab:green", label="W1 = |θ| (closed form)")
  right.plot(theta, results["w1_samples"], "o", ms=4, color="tab:green", label="W1, samples")
  right.plot(fine[fine != 0], np.full((fine != 0).sum(), math.log(2)), "-", color="tab:purple")
  right.plot([0], [0], "s", color="tab:purple", label="JSD = log 2 for θ ≠ 0, 0 at θ = 0")
  right.plot(theta, results["jsd_samples"], "x", color="tab:purple", label="JSD, histograms")
  kl = np.asarray(results["kl_samples"], np.float64)
  right.plot(
    theta[np.isinf(kl)],
    np.full(np.isinf(kl).sum(), top - 0.05),
    "^",
    ms=5,
    color="tab:red",
    label="KL = +∞, histograms (drawn at the top)",
  )
  right.plot(
    theta[~np.isinf(kl)], kl[~np.isinf(kl)], "v", ms=6, color="tab:red", label="KL, finite"
  )
  right.axhline(math.log(2), color="tab:purple", lw=0.5, ls=":")
  right.set(xlabel="θ", ylabel="nats (KL, JSD) / distance (W1)", ylim=(-0.05, top))
  right.set_title("only W1 is continuous in θ with a useful gradient")
  right.legend(fontsize="small", ncols=2, loc="upper center", bbox_to_anchor=(0.5, 0.93))
  return plotting.save(fig, path)
