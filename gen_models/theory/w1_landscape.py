r"""W1 is convex in the distribution, not in the generator's parameters.

Target T = ½δ₋₁ + ½δ₁ on the line; generator P_{a,b} = ½δ_a + ½δ_b with parameters (a, b). Two
points of mass ½ each are matched either in order or crosswise, so::

    W1(P_{a,b}, T) = ½ min(|a + 1| + |b − 1|,  |a − 1| + |b + 1|).

Its global minima (value 0) are (a, b) = (−1, 1) and (1, −1), two parameter vectors of the *same*
distribution. Halfway between them, (0, 0) is δ₀ with W1 = 1 > ½ (0 + 0): f(a, b) = W1(P_{a,b}, T)
is not convex (a convex function has a convex set of minimisers, and here the segment between
the minima climbs to 1). W1(·, T) is convex as a function of the distribution — for mixtures,
W1((1 − t) P + t P′, T) ≤ (1 − t) W1(P, T) + t W1(P′, T) (mix the two optimal plans) — and the
mixture of the two minimising distributions is T itself, W1 = 0 all along; that convexity does
not carry over to the parameters, so gradient descent on (a, b) is not a convex problem.

The landscape is computed point by point with ``divergences.wasserstein1`` (the sorted 1-D closed
form) and compared with the formula above.
"""

from __future__ import annotations

import numpy as np

from gen_models import divergences

TARGET = np.array([-1.0, 1.0])


def closed_form(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """½ min(|a + 1| + |b − 1|, |a − 1| + |b + 1|), elementwise."""
  return 0.5 * np.minimum(np.abs(a + 1) + np.abs(b - 1), np.abs(a - 1) + np.abs(b + 1))


def mixture_w1(params_p, params_q, t: float, copies: int = 4) -> float:
  """W1((1 − t) P_{params_p} + t P_{params_q}, T) for ``t`` a multiple of 1/``copies``.

  The mixture is the empirical measure of ``4 · copies`` points: each of P's two points
  ``2 · (copies − k)`` times and each of Q's ``2 · k`` times (t = k / copies), against T's two
  points ``2 · copies`` times each.
  """
  k = round(t * copies)
  if abs(k - t * copies) > 1e-9 or not 0 <= k <= copies:
    raise ValueError(f"t must be a multiple of 1/{copies} in [0, 1], got {t}")
  points = np.concatenate([np.repeat(params_p, 2 * (copies - k)), np.repeat(params_q, 2 * k)])
  return divergences.wasserstein1(points, np.repeat(TARGET, 2 * copies))


def run(*, grid_points: int = 161, half_width: float = 2.0, path_points: int = 9) -> dict:
  """The landscape on a ``grid_points²`` grid of (a, b) ∈ [−half_width, half_width]², and the
  two paths between the minima (in the parameters, and as a mixture of distributions).

  Returns:
    A JSON-ready dict but for ``arrays`` (NumPy: the grid axes ``a``, ``b`` and ``w1``,
    ``grid_points × grid_points`` with rows indexed by b), ``summary`` (the minima found, the
    value at the midpoint, the largest difference from the closed form, convexity checks),
    and W1 along three paths at ``path_t``: ``path_parameters`` (the segment between the
    minima), ``path_mixture`` (the mixture of their distributions) and ``path_dirac_mixture``
    ((1 − t) δ₋₁ + t δ₁).
  """
  axis = np.linspace(-half_width, half_width, grid_points)
  w1 = np.array([[divergences.wasserstein1([a, b], TARGET) for a in axis] for b in axis])
  gb, ga = np.meshgrid(axis, axis, indexing="ij")
  exact = closed_form(ga, gb)
  rows, cols = np.nonzero(w1 <= 1e-12)
  minima = sorted((round(axis[c], 9), round(axis[r], 9)) for r, c in zip(rows, cols, strict=True))
  m1, m2 = np.array([-1.0, 1.0]), np.array([1.0, -1.0])
  t = np.linspace(0.0, 1.0, path_points)
  along = [divergences.wasserstein1((1 - s) * m1 + s * m2, TARGET) for s in t]
  mixture = [mixture_w1(m1, m2, s, copies=path_points - 1) for s in t]
  # Convexity in the distribution along a mixture that moves: δ₋₁ (a = b = −1) to δ₁ (1, 1).
  p, q = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
  mix = [mixture_w1(p, q, s, copies=path_points - 1) for s in t]
  chord = [(1 - s) * mix[0] + s * mix[-1] for s in t]
  midpoint = divergences.wasserstein1([0.0, 0.0], TARGET)
  summary = {
    "minima": minima,
    "w1_at_minima": [float(divergences.wasserstein1(m, TARGET)) for m in (m1, m2)],
    "w1_at_midpoint_0_0": midpoint,
    "convexity_violated_at_midpoint": bool(midpoint > 0.5 * (0.0 + 0.0)),
    "max_abs_library_minus_closed_form": float(np.max(np.abs(w1 - exact))),
    "mixture_path_max_w1": float(np.max(mixture)),
    "dirac_mixture_w1_at_t_half": float(mix[len(t) // 2]),
    "dirac_mixture_max_excess_over_chord": float(np.max(np.subtract(mix, chord))),
  }
  return {
    "settings": {"grid_points": grid_points, "half_width": half_width},
    "summary": summary,
    "arrays": {"a": axis, "b": axis, "w1": w1},
    "path_t": t.tolist(),
    "path_parameters": along,
    "path_mixture": mixture,
    "path_dirac_mixture": mix,
  }


def plot(results: dict, path: str) -> str:
  """Left: the landscape with its two minima; right: W1 along the two paths between them."""
  from gen_models.theory import plotting

  a, b, w1 = (results["arrays"][k] for k in ("a", "b", "w1"))
  fig = plotting.new_figure(11.0, 4.6)
  left, right = fig.subplots(1, 2)
  filled = left.contourf(a, b, w1, levels=24, cmap="viridis")
  left.contour(a, b, w1, levels=[0.25, 0.5, 0.75, 1.0, 1.5], colors="w", linewidths=0.5)
  fig.colorbar(filled, ax=left, label="W1 to the target ½δ₋₁ + ½δ₁")
  left.plot([-1, 1], [1, -1], "--", color="w", lw=1, label="segment between the minima")
  left.plot([-1, 1], [1, -1], "*", color="tab:red", ms=14, label="global minima (W1 = 0)")
  left.plot([0], [0], "o", color="tab:orange", ms=7, label="midpoint (0, 0): W1 = 1")
  left.set(xlabel="a", ylabel="b", aspect="equal")
  left.set_title("W1 over the generator's parameters (a, b)")
  left.legend(fontsize="small", loc="lower left")
  t = np.asarray(results["path_t"])
  right.plot(
    t,
    results["path_parameters"],
    "o-",
    color="tab:orange",
    label="parameters: (a, b) = (1 − t)(−1, 1) + t(1, −1)",
  )
  right.plot(
    t,
    results["path_mixture"],
    "s-",
    color="tab:blue",
    label="distributions: (1 − t) P(−1,1) + t P(1,−1)",
  )
  right.plot(t, np.zeros_like(t), "k:", label="chord between the two minima (convexity bound)")
  right.plot(
    t,
    results["path_dirac_mixture"],
    "^-",
    color="tab:green",
    label="distributions: (1 − t) δ₋₁ + t δ₁",
  )
  right.plot(
    [0, 1],
    [results["path_dirac_mixture"][0], results["path_dirac_mixture"][-1]],
    "--",
    color="tab:green",
    lw=0.8,
    label="its chord",
  )
  right.set(xlabel="t", ylabel="W1 to the target", ylim=(-0.05, 1.45))
  right.set_title("W1 along paths: parameters vs distributions")
  right.legend(fontsize="small", loc="upper right")
  return plotting.save(fig, path)
