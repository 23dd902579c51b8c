r"""Gradient-boosted trees that reproduce scikit-learn's ``GradientBoostingClassifier``.

DCI (:func:`gen_models.metrics.disentanglement.dci`) fits, per factor, scikit-learn 1.9's
``GradientBoostingClassifier(loss="log_loss", learning_rate=0.1, n_estimators=100,
subsample=1.0, max_depth=3, min_samples_split=2, min_samples_leaf=1, max_features=None,
random_state=seed)``: one depth-3 regression tree per class and stage, 33 ms each in
scikit-learn's Cython, which sorts the node's samples for every feature at every node.
:func:`fit_gradient_boosting` fits the same model in numpy: the samples are sorted once per
feature and every node keeps, per feature, its samples in that sorted order (a stable partition
at each split), so a node's split search is one gather, one cumulative sum and a few elementwise
operations over ``(features, node samples)``.

What is reproduced, step by step (scikit-learn 1.9.1, ``ensemble/_gb.py``, ``tree/_splitter.pyx``,
``_partitioner.pyx``, ``_criterion.pyx``, ``_tree.pyx``):

* ``X`` as float32; classes encoded by ``np.unique``; the initial raw prediction from the class
  priors (``DummyClassifier(strategy="prior")``, clipped to ``[eps, 1 − eps]``): the multinomial
  link ``log(p / gmean(p))`` for ``K > 2`` classes, ``logit(p₁)`` for 2 classes.
* Per stage the negative gradient of ``HalfMultinomialLoss`` (``onehot − softmax``, with its
  max-shift and sequential sum of exponentials) or ``HalfBinomialLoss`` (its two-branch
  ``expit``), then one regression tree per class (1 tree for 2 classes), in class order.
* The tree (``DepthFirstTreeBuilder``, squared-error criterion — scikit-learn 1.9's trees ignore
  ``friedman_mse``): nodes in its stack order; a node is a leaf at ``max_depth``, below
  ``min_samples_split`` samples, or with impurity ``<= eps``. The split search draws features in
  scikit-learn's order (its xorshift ``rand_r``, seeded per tree from
  ``RandomState(seed).randint(0, 2³¹ − 1)``, its Fisher–Yates walk with the bookkeeping of
  constant features carried from parent to children), skips constant features
  (``max − min <= 1e-7`` in float32), considers only positions between values more than
  ``1e-7`` apart, scores them by the proxy ``S_l²/n_l + S_r²/n_r`` with ``S_l`` accumulated the
  way the criterion does (forward from the previous position, or backward from the node's end
  when that is shorter) and ``S_r = S − S_l``, keeps the first strictly greater proxy in draw
  order then position order, and puts the threshold at ``x_{p−1}/2 + x_p/2`` (float64). The
  node's samples are then in scikit-learn's memory order (sorted by the last drawn feature, then
  its swap partition), which fixes the order of every sum: node sums, children impurities,
  improvement ``n_t/n · (i − n_r/n_t·i_r − n_l/n_t·i_l)``; a split with improvement
  ``< −eps`` is dropped.
* Leaves: the Newton step of ``_update_terminal_regions`` over the leaf's samples in index order
  (``(K−1)/K · mean(g) / mean(p(1−p))``; binary without the factor; 0 when the denominator's
  magnitude is below ``1e-150``), shrunk by the learning rate into the raw predictions.
* ``feature_importances``: per tree the weighted impurity decreases summed in node order over the
  root's weight, averaged over the trees with more than one node (as scikit-learn 1.9 does:
  over trees, not stages), normalised to sum 1. ``predict``: first argmax of the raw decision;
  binary: class 1 where the raw decision is ``>= 0``.

So every floating-point operation that decides a split is the one scikit-learn does, in the same
order, and the fitted model equals scikit-learn's bit for bit (checked in
``tests/test_boosting.py``), with one exception: when a node holds several samples with the same
float32 value of a feature, scikit-learn's introsort leaves them in an order this module does not
reproduce (here: by sample index). That order only changes the last bits of sums over the tied
samples, which can decide between two candidate splits whose proxies are equal up to rounding;
predictions and importances then still agree to rounding in all the cases tested.

The exponential: scikit-learn's losses call the C library's ``exp``, numpy's ``np.exp`` (the
default ``exp``, fast) is the C library's on x86-64 without AVX-512, but its own AVX-512 code may
differ in the last bit. Then a gradient differs by an ulp, and where two candidate splits tie up to
rounding the other one may win. Measured on an AVX-512 CPU (``tests/test_boosting.py``'s DCI
settings, 100 stages of 3 trees): a tree of stage 29 first splits differently, 7 of the 300
differ (later stages fit other gradients), importances within 1.1e-4, the same predictions.
``exp=libm_exp`` (the C library's, element by element through Python floats: about 0.24 µs a
value under load, so 0.09 s a stage for 10,000 points of 40 classes, 7 % of such a fit in
``experiments.bench.boosting``) makes the fit bit-equal on every machine; the
tests compare with it bit for bit on every CPU, and the default within a stated tolerance where
the two differ. pyproject.toml pins scikit-learn to 1.9.x, the release these internals are read
from. :func:`sklearn_classifier` is scikit-learn's own model with the same parameters (DCI's
``trees="sklearn"``).

Speed (``python -m experiments.bench.boosting --n=10000 --classes=40 --stages=100
--sklearn_stages=10``: 10 codes, one core of this machine, shared): 30 s here against 126 s for
scikit-learn (measured on 10 stages, scaled), 4.2× (7.6 ms against 31.6 ms per tree). A whole
DCI evaluation (113 trees per stage) then takes about 85 s instead of about 6 minutes. What is
left is numpy's per-element cost: per tree and depth level, one gather, one sequential ``cumsum``
(which numpy does not vectorise) and six in-place elementwise passes over ``features ×
samples``, plus the stable partition of the per-feature orders; a sum in another order, or
blocked, would change the bits of the proxies.

Where scikit-learn 1.9.1 differs from older versions: the trees use the squared-error criterion
(``friedman_mse`` is deprecated and mapped to it), whose proxy is ``S_l²/n_l + S_r²/n_r``; the
threshold has no fallback for a midpoint that rounds to the upper value (the float64 halves of
two float32 values always fall strictly between them); importances are averaged over trees, not
summed per stage first (after the normalisation the two differ only by rounding).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import scipy.special
import scipy.stats

from gen_models.errors import UserError

FEATURE_THRESHOLD = np.float32(1e-7)  # scikit-learn's tree/_partitioner.pxd.
EPSILON = float(np.finfo(np.float64).eps)  # tree/_tree.pyx.
RAND_R_MAX = 2**31 - 1  # tree/_utils.pxd.
_SAFE_DIVIDE_MIN = 1e-150  # ensemble/_gb.py's _safe_divide.
_LIBM_EXP = np.frompyfunc(math.exp, 1, 1)


def libm_exp(x: np.ndarray) -> np.ndarray:
  """``exp`` of a float64 array by the C library's ``exp`` (``math.exp``), element by element: the
  function scikit-learn's Cython losses call, bit for bit on every CPU."""
  return _LIBM_EXP(x).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Boosted:
  """A fitted gradient-boosted classifier (scikit-learn's ``GradientBoostingClassifier``).

  Trees are stored in scikit-learn's node order (depth first, left child first), padded to
  ``M = 2^(max_depth+1) − 1`` nodes; ``T = 1`` tree per stage for 2 classes, else ``T = K``.

  Attributes:
    classes: ``(K,)`` the sorted class labels.
    init: ``(T,)`` initial raw prediction.
    learning_rate: shrinkage of every leaf value.
    feature: ``(S, T, M)`` int, split feature (``-1`` for leaves and unused nodes).
    threshold: ``(S, T, M)`` float64, a sample goes left when ``x_f <= threshold`` (float32 ``x``).
    left, right: ``(S, T, M)`` int children (``-1`` for leaves).
    value: ``(S, T, M)`` float64 leaf values (the Newton step, before the learning rate).
    feature_importances: ``(d,)`` normalised impurity decrease per feature (sums to 1, or all 0).
  """

  classes: np.ndarray
  init: np.ndarray
  learning_rate: float
  feature: np.ndarray
  threshold: np.ndarray
  left: np.ndarray
  right: np.ndarray
  value: np.ndarray
  feature_importances: np.ndarray

  def decision_function(self, x) -> np.ndarray:
    """Raw decision of ``x (m, d)``: ``(m, K)``, or ``(m,)`` for 2 classes (the log-odds of the
    second class), as ``GradientBoostingClassifier.decision_function``."""
    x = _check_x(x, self.feature_importances.shape[0])
    raw = np.broadcast_to(self.init, (x.shape[0], self.init.shape[0])).copy()
    rows = np.arange(x.shape[0])
    depth = int(np.log2(self.feature.shape[2] + 1)) - 1
    for s in range(self.feature.shape[0]):
      for t in range(self.feature.shape[1]):
        node = np.zeros(x.shape[0], np.intp)
        for _ in range(depth):
          f = self.feature[s, t, node]
          inner = f >= 0
          go_left = x[rows, np.maximum(f, 0)].astype(np.float64) <= self.threshold[s, t, node]
          node = np.where(
            inner, np.where(go_left, self.left[s, t, node], self.right[s, t, node]), node
          )
        raw[:, t] += self.learning_rate * self.value[s, t, node]
    return raw[:, 0] if raw.shape[1] == 1 else raw

  def predict(self, x) -> np.ndarray:
    """Class labels ``(m,)`` of ``x (m, d)``: the first largest raw decision (2 classes: the
    second class where the decision is ``>= 0``)."""
    raw = self.decision_function(x)
    encoded = (raw >= 0).astype(np.intp) if raw.ndim == 1 else np.argmax(raw, axis=1)
    return self.classes[encoded]


def _check_x(x, d: int | None = None) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise UserError(f"boosting: x must be a non-empty (n, d) array, got shape {x.shape}")
  if d is not None and x.shape[1] != d:
    raise UserError(f"boosting: x has {x.shape[1]} features, the model was fit on {d}")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise UserError("boosting: x has non-finite values (as float32)")
  return x


# ---------------------------------------------------------------------------------------------
# scikit-learn's random feature order.


def _rand_r(state: list[int]) -> int:
  """scikit-learn's ``our_rand_r``: 32-bit xorshift; ``state[0]`` is updated."""
  s = state[0] or 1
  s ^= (s << 13) & 0xFFFFFFFF
  s ^= s >> 17
  s ^= (s << 5) & 0xFFFFFFFF
  state[0] = s
  return s % (RAND_R_MAX + 1)


def _draw_features(
  state: list[int],
  features: list[int],
  constant_features: list[int],
  n_known: int,
  is_constant: np.ndarray,
) -> tuple[list[int], int | None, int]:
  """``node_split_best``'s feature loop with ``max_features = d``: the walk over ``features``
  (updated in place, with ``constant_features``) that scikit-learn does at one node.

  Returns the non-constant features in the order they are evaluated, the last feature whose
  values were sorted (``None`` if none: the samples keep their order) and the number of constant
  features handed to the children.
  """
  d = len(features)
  f_i, n_visited, n_found, n_drawn, n_total = d, 0, 0, 0, n_known
  evaluated: list[int] = []
  last_sorted = None
  while f_i > n_total and (n_visited < d or n_visited <= n_found + n_drawn):
    n_visited += 1
    f_j = n_drawn + _rand_r(state) % (f_i - n_found - n_drawn)
    if f_j < n_known:
      features[n_drawn], features[f_j] = features[f_j], features[n_drawn]
      n_drawn += 1
      continue
    f_j += n_found
    feature = features[f_j]
    last_sorted = feature
    if is_constant[feature]:
      features[f_j], features[n_total] = features[n_total], features[f_j]
      n_found += 1
      n_total += 1
      continue
    f_i -= 1
    features[f_i], features[f_j] = features[f_j], features[f_i]
    evaluated.append(feature)
  features[:n_known] = constant_features[:n_known]
  constant_features[n_known : n_known + n_found] = features[n_known : n_known + n_found]
  return evaluated, last_sorted, n_total


# ---------------------------------------------------------------------------------------------
# One regression tree.


def _seq_sum(values: np.ndarray) -> float:
  """Sum in index order, one addition at a time from 0 (a C loop's ``s += v``)."""
  return float(np.cumsum(values)[-1]) if values.shape[0] else 0.0


def swap_partition(samples: np.ndarray, go_left: np.ndarray) -> np.ndarray:
  """scikit-learn's in-place partition (``partition_samples_final``) of ``samples (m,)``.

  It walks ``p`` from the front and ``e`` from the end; a sample at ``p`` going right is swapped
  with the one at ``e − 1``. Closed form: with ``n_l`` left-goers, the holes (right-goers among
  the first ``n_l``) are filled by the tail's left-goers taken from the end; the tail positions
  down to the lowest tail left-goer ``z`` receive, from the end, the hole's sample then every
  right-goer read from the tail until the next left-goer fills the hole; once the holes are
  filled, the untouched right-goers ``[n_l, z)`` end up rotated left by one.
  """
  m = samples.shape[0]
  n_left = int(np.count_nonzero(go_left))
  holes = np.flatnonzero(~go_left[:n_left])
  out = samples.copy()
  z = m
  if holes.shape[0]:
    z = n_left + int(np.flatnonzero(go_left[n_left:])[0])
    tail = samples[z:][::-1]  # In the order the swaps read them.
    tail_left = go_left[z:][::-1]
    out[holes] = tail[tail_left]
    moved = samples[holes]
    filled = np.cumsum(tail_left)
    received = np.empty(m - z, samples.dtype)
    received[0] = moved[0]
    received[1:] = np.where(
      tail_left[:-1], moved[np.minimum(filled[:-1], moved.shape[0] - 1)], tail[:-1]
    )
    out[m - 1 - np.arange(m - z)] = received
  if z - n_left > 1:
    out[n_left:z] = np.roll(samples[n_left:z], -1)
  return out


def _exact_left_sums(ys: np.ndarray, valid: np.ndarray, total: float) -> np.ndarray:
  """``S_l`` at every valid position of one feature as ``RegressionCriterion.update`` computes
  it: forward from the previous valid position, or (when the jump is longer than the rest) from
  ``total`` minus the samples from the end back to the position.

  Args:
    ys: ``(m,)`` targets in the feature's sorted order.
    valid: ``(m − 1,)`` whether position ``p = 1 … m−1`` (``p`` samples left) is a candidate.
  Returns:
    ``(m − 1,)`` ``S_l`` (only meaningful where ``valid``).
  """
  m = ys.shape[0]
  out = np.zeros(m - 1)
  backward = np.cumsum(np.concatenate([[total], -ys[::-1]]))  # backward[j]: total − last j.
  pos, current = 0, 0.0
  positions = np.flatnonzero(valid) + 1
  i = 0
  while i < positions.shape[0]:
    p = int(positions[i])
    if p - pos <= m - p:
      # A run of forward steps from ``pos``, up to the next backward one.
      j = i
      run = [p]
      last = p
      while j + 1 < positions.shape[0]:
        q = int(positions[j + 1])
        if q - last > m - q:
          break
        run.append(q)
        last = q
        j += 1
      chain = np.cumsum(np.concatenate([[current], ys[pos:last]]))
      for q in run:
        out[q - 1] = chain[q - pos]
      current = float(chain[last - pos])
      pos = last
      i = j + 1
    else:
      current = float(backward[m - p])
      out[p - 1] = current
      pos = p
      i += 1
  return out


def _gaps(valid: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
  """Non-candidate positions of ``valid (f, m − 1)`` (candidates ``p = 1 … m−1``) as
  ``(rows, columns)``, and the rows where the criterion reaches some candidate ``p`` backward
  from the end: the jump from the previous candidate (or 0) over a run of non-candidates is
  longer than ``m − p``."""
  rows, cols = np.nonzero(~valid)
  if rows.shape[0] == 0:
    return (rows, cols), rows
  m = valid.shape[1] + 1
  p = cols + 1
  starts = np.ones(rows.shape[0], bool)
  starts[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)
  ends = np.append(starts[1:], True)
  after = p[ends] + 1  # The candidate after each run (if < m); before it: p[starts] − 1.
  backward = (after < m) & (after - (p[starts] - 1) > m - after)
  return (rows, cols), np.unique(rows[starts][backward])


@dataclasses.dataclass
class _Tree:
  feature: list
  threshold: list
  left: list
  right: list
  impurity: list
  weight: list
  leaves: list  # (node id, start, end) of every leaf, in node order.


class _Data:
  """What every tree of one fit shares: float32 features by row, flattened (``x_flat[j·n + i]``),
  the flat ids ``j·n + i`` of each row sorted by value (stable), and the root's sorted values,
  candidate positions and constant flags, which are the same for every tree."""

  def __init__(self, x: np.ndarray):
    n, d = x.shape
    self.n, self.d = n, d
    xt = np.ascontiguousarray(x.T)
    self.x_flat = xt.ravel()
    self.offset = (np.arange(d) * n)[:, None]
    self.presorted = np.argsort(xt, axis=1, kind="stable") + self.offset
    xs = np.take(self.x_flat, self.presorted)
    self.root_valid = xs[:, 1:] > xs[:, :-1] + FEATURE_THRESHOLD
    self.root_xs = xs
    self.root_constant = xs[:, -1] <= xs[:, 0] + FEATURE_THRESHOLD
    self.root_gaps = _gaps(self.root_valid)
    self.counts = np.arange(1, n, dtype=np.float64)  # n_l at each position.
    self.counts_down = self.counts[::-1].copy()  # n − 1, …, 1: n_r = counts_down[n − m:].
    self.buffers = (np.empty((d, max(n - 1, 1))), np.empty((d, max(n - 1, 1))))
    self.mask = np.zeros(d * n, bool)


def _fit_tree(
  data: _Data, y: np.ndarray, rand_state: int, max_depth: int, min_samples_split: int
) -> tuple[_Tree, np.ndarray]:
  """One ``DecisionTreeRegressor(criterion="squared_error")`` on ``data`` and float64 targets
  ``y (n,)``, node by node in scikit-learn's order (a stack, left child first).

  Returns the tree and ``samples (n,)``: scikit-learn's final sample array, each leaf a contiguous
  run ``samples[start:end]``.
  """
  n, d = data.n, data.d
  samples = np.arange(n)
  by_feature = data.presorted.copy()  # Per feature, each node's flat ids in sorted order.
  y_flat = np.tile(y, d)
  walk = ([rand_state], list(range(d)), [0] * d)  # rand_r state, features, constant features.
  tree = _Tree([], [], [], [], [], [], [])
  stack = [(0, n, 0, -1, False, np.inf, 0)]
  while stack:
    start, end, depth, parent, is_left, impurity, n_known = stack.pop()
    m = end - start
    node = len(tree.feature)
    is_leaf = depth >= max_depth or m < min_samples_split
    if node == 0:
      ys = y[samples[start:end]]
      total, sq_total = _seq_sum(ys), _seq_sum(ys * ys)
      impurity = sq_total / m - (total / m) ** 2
    is_leaf = is_leaf or impurity <= EPSILON
    split = None
    if not is_leaf:
      split, n_known = _split_node(
        data, y, y_flat, samples, by_feature, start, end, impurity, walk, n_known,
        need_children=depth + 1 < max_depth,
      )  # fmt: skip
      is_leaf = split is None or split[4] + EPSILON < 0.0
    if parent >= 0:
      (tree.left if is_left else tree.right)[parent] = node
    tree.impurity.append(impurity)
    tree.weight.append(float(m))
    tree.left.append(-1)
    tree.right.append(-1)
    if is_leaf:
      tree.feature.append(-1)
      tree.threshold.append(-2.0)
      tree.leaves.append((node, start, end))
    else:
      feature, threshold, pos, (imp_left, imp_right), _ = split
      tree.feature.append(feature)
      tree.threshold.append(threshold)
      stack.append((start + pos, end, depth + 1, node, False, imp_right, n_known))
      stack.append((start, start + pos, depth + 1, node, True, imp_left, n_known))
  return tree, samples


def _split_node(
  data, y, y_flat, samples, by_feature, start, end, impurity, walk, n_known, need_children
):  # fmt: skip
  """``node_split_best`` on ``samples[start:end]``: updates ``samples``, ``by_feature`` and the
  feature walk; returns ``((feature, threshold, pos, (i_l, i_r), improvement) or None,
  n_constant_for_children)``."""
  n, d = data.n, data.d
  m = end - start
  root = m == n
  block = by_feature[:, start:end]  # (d, m) flat ids, each row sorted by its feature.
  if root:
    is_constant = data.root_constant
  else:
    is_constant = np.take(data.x_flat, block[:, -1]) <= (
      np.take(data.x_flat, block[:, 0]) + FEATURE_THRESHOLD
    )
  evaluated, last_sorted, n_total = _draw_features(*walk, n_known, is_constant)
  if not evaluated:
    if last_sorted is not None:
      samples[start:end] = block[last_sorted] - last_sorted * n
    return None, n_total
  ys_node = y[samples[start:end]]  # The criterion's sums, in the node's order before sorting.
  total = _seq_sum(ys_node)
  sq_total = _seq_sum(ys_node * ys_node)
  samples[start:end] = block[last_sorted] - last_sorted * n

  # Every row (constant ones have no candidate position); the walk decides among them below.
  if root:
    xs, valid = data.root_xs, data.root_valid
  else:
    xs = np.take(data.x_flat, block)
    valid = xs[:, 1:] > xs[:, :-1] + FEATURE_THRESHOLD  # (d, m − 1)
  ys = np.take(y_flat, block)
  left_sum = data.buffers[0][:, : m - 1]
  np.cumsum(ys[:, :-1], axis=1, out=left_sum)
  if root:
    gaps, backward = data.root_gaps
  elif valid.all():
    gaps, backward = (), ()
  else:
    gaps, backward = _gaps(valid)
  for r in backward:
    left_sum[r] = _exact_left_sums(ys[r], valid[r], total)
  n_l = data.counts[: m - 1]
  n_r = data.counts_down[n - m :]
  proxy = data.buffers[1][:, : m - 1]
  scratch = ys[:, :-1]  # Reused for S_r²/n_r.
  np.subtract(total, left_sum, out=scratch)
  np.multiply(scratch, scratch, out=scratch)
  np.divide(scratch, n_r, out=scratch)
  np.multiply(left_sum, left_sum, out=proxy)
  np.divide(proxy, n_l, out=proxy)
  np.add(proxy, scratch, out=proxy)
  if len(gaps):
    proxy[gaps] = -np.inf
  best_pos = np.argmax(proxy, axis=1)
  best_proxy = proxy[np.arange(d), best_pos]
  ev = np.asarray(evaluated)
  feature = int(ev[np.argmax(best_proxy[ev])])
  if best_proxy[feature] == -np.inf:
    return None, n_total
  pos = int(best_pos[feature]) + 1  # Samples to the left.
  threshold = float(xs[feature, pos - 1]) / 2.0 + float(xs[feature, pos]) / 2.0

  node = samples[start:end]
  go_left = data.x_flat[node + feature * n].astype(np.float64) <= threshold
  node = swap_partition(node, go_left)
  samples[start:end] = node
  left, right = node[:pos], node[pos:]
  y_left = y[left]
  if pos <= m - pos:
    sum_left = _seq_sum(y_left)
  else:
    sum_left = _seq_sum(np.concatenate([[total], -y[right[::-1]]]))
  sq_left = _seq_sum(y_left * y_left)
  sum_right = total - sum_left
  sq_right = sq_total - sq_left
  imp_left = sq_left / pos - (sum_left / pos) ** 2
  imp_right = sq_right / (m - pos) - (sum_right / (m - pos)) ** 2
  improvement = (m / n) * (impurity - (m - pos) / m * imp_right - pos / m * imp_left)

  if need_children:
    flat_left = left + data.offset
    data.mask[flat_left] = True
    goes = np.take(data.mask, block)
    first, second = block[goes].reshape(d, pos), block[~goes].reshape(d, m - pos)
    by_feature[:, start : start + pos] = first
    by_feature[:, start + pos : end] = second
    data.mask[flat_left] = False
  return (feature, threshold, pos, (imp_left, imp_right), improvement), n_total


def _importances(tree: _Tree, d: int) -> np.ndarray:
  """``Tree.compute_feature_importances(normalize=False)``."""
  out = np.zeros(d)
  for node, f in enumerate(tree.feature):
    if f >= 0:
      lo, hi = tree.left[node], tree.right[node]
      out[f] += (
        tree.weight[node] * tree.impurity[node]
        - tree.weight[lo] * tree.impurity[lo]
        - tree.weight[hi] * tree.impurity[hi]
      )
  return out / tree.weight[0]


# ---------------------------------------------------------------------------------------------
# Boosting.


def _negative_gradient(
  raw: np.ndarray, y: np.ndarray, n_classes: int, exp: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
  """``−loss.gradient`` of ``HalfMultinomialLoss`` (``(n, K)``) or ``HalfBinomialLoss``
  (``(n, 1)``) as scikit-learn's Cython computes it, sample by sample, with ``exp``."""
  if n_classes == 2:
    r = raw[:, 0]
    yf = y.astype(np.float64)
    with np.errstate(over="ignore"):
      e = exp(-r)
      grad = np.where(r > -37, ((1 - yf) - yf * e) / (1 + e), exp(r) - yf)
    return -grad[:, None]
  shifted = raw - raw.max(axis=1, keepdims=True)
  p = exp(shifted)
  sum_exps = np.zeros(raw.shape[0])
  for k in range(n_classes):  # Sequential, as the C loop.
    sum_exps += p[:, k]
  p /= sum_exps[:, None]
  onehot = (y[:, None] == np.arange(n_classes)).astype(np.float64)
  return -(p - onehot)


def _leaf_value(neg: np.ndarray, target: np.ndarray, n_classes: int) -> float:
  """``_update_terminal_regions``'s Newton step over one leaf's samples (index order)."""
  prob = target - neg
  numerator = np.average(neg)
  if n_classes > 2:
    numerator *= (n_classes - 1) / n_classes
  denominator = np.average(prob * (1 - prob))
  if abs(denominator) < _SAFE_DIVIDE_MIN:
    return 0.0
  return float(numerator) / float(denominator)


def _initial_raw(y: np.ndarray, n_classes: int, n: int) -> np.ndarray:
  """``_init_raw_predictions`` with ``DummyClassifier(strategy="prior")``: ``(T,)``."""
  counts = np.bincount(y, minlength=n_classes)
  prior = counts / counts.sum()
  eps = np.finfo(np.float64).eps
  proba = np.clip(np.ones((n, 1)) * prior, eps, 1 - eps, dtype=np.float64)
  if n_classes == 2:
    return scipy.special.logit(proba[:, 1])[:1]
  return np.log(proba / scipy.stats.gmean(proba, axis=1)[:, None])[0]


def fit_gradient_boosting(
  x,
  y,
  *,
  n_estimators: int = 100,
  learning_rate: float = 0.1,
  max_depth: int = 3,
  min_samples_split: int = 2,
  seed: int = 0,
  exp: Callable[[np.ndarray], np.ndarray] = np.exp,
) -> Boosted:
  """Fit ``GradientBoostingClassifier(loss="log_loss", subsample=1.0, min_samples_leaf=1,
  max_features=None, random_state=seed, ...)`` with the given stages, learning rate, depth.

  Args:
    x: ``(n, d)`` features (used as float32, as scikit-learn does).
    y: ``(n,)`` integer class labels, at least 2 distinct.
    n_estimators, learning_rate, max_depth, min_samples_split: as scikit-learn's.
    seed: ``random_state`` (an int): it orders the features at every split.
    exp: the exponential of the loss gradients, float64 array → array: ``np.exp`` (fast) or
      :func:`libm_exp` (scikit-learn's bit for bit on every CPU; see the module docstring).

  Returns:
    The fitted :class:`Boosted`.
  """
  x = _check_x(x)
  y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise UserError(f"boosting: y must have shape ({x.shape[0]},), got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise UserError(f"boosting: y must be integer class labels, got dtype {y.dtype}")
  if n_estimators < 1 or max_depth < 1 or min_samples_split < 2 or not learning_rate > 0:
    raise UserError(
      "boosting: need n_estimators >= 1, max_depth >= 1, min_samples_split >= 2, learning_rate > 0"
    )
  classes, encoded = np.unique(y, return_inverse=True)
  n_classes = classes.shape[0]
  if n_classes < 2:
    raise UserError("boosting: y has a single class; at least 2 are needed")
  n, d = x.shape
  n_trees = 1 if n_classes == 2 else n_classes
  data = _Data(x)
  rng = np.random.RandomState(seed)
  init = _initial_raw(encoded, n_classes, n)
  raw = np.broadcast_to(init, (n, n_trees)).copy()
  size = 2 ** (max_depth + 1) - 1
  shape = (n_estimators, n_trees, size)
  feature = np.full(shape, -1, np.intp)
  threshold = np.full(shape, -2.0)
  left = np.full(shape, -1, np.intp)
  right = np.full(shape, -1, np.intp)
  value = np.zeros(shape)
  importances = []
  for stage in range(n_estimators):
    neg = _negative_gradient(raw, encoded, n_classes, exp)
    for t in range(n_trees):
      target = (encoded == t).astype(np.float64) if n_trees > 1 else encoded.astype(np.float64)
      neg_t = np.ascontiguousarray(neg[:, t])
      tree, samples = _fit_tree(
        data, neg_t, rng.randint(0, RAND_R_MAX), max_depth, min_samples_split
      )
      count = len(tree.feature)
      feature[stage, t, :count] = tree.feature
      threshold[stage, t, :count] = tree.threshold
      left[stage, t, :count] = tree.left
      right[stage, t, :count] = tree.right
      leaf_of = np.empty(n, np.intp)
      for node, start, end in tree.leaves:
        idx = np.sort(samples[start:end])
        leaf_of[idx] = node
        value[stage, t, node] = _leaf_value(neg_t[idx], target[idx], n_classes)
      raw[:, t] += learning_rate * value[stage, t, :count].take(leaf_of)
      if count > 1:
        importances.append(_importances(tree, d))
  if importances:
    mean = np.mean(importances, axis=0, dtype=np.float64)
    importance = mean / np.sum(mean)
  else:
    importance = np.zeros(d)
  return Boosted(classes, init, float(learning_rate), feature, threshold, left, right, value,
                 importance)  # fmt: skip


def sklearn_classifier(
  seed: int = 0,
  n_estimators: int = 100,
  learning_rate: float = 0.1,
  max_depth: int = 3,
  min_samples_split: int = 2,
):
  """scikit-learn's unfitted ``GradientBoostingClassifier`` with the model of
  :func:`fit_gradient_boosting` written out (every parameter it reproduces): the way back to the
  reference. Its fitted ``feature_importances_`` and ``predict`` are this module's
  ``feature_importances`` and ``predict``."""
  from sklearn.ensemble import GradientBoostingClassifier

  return GradientBoostingClassifier(
    loss="log_loss",
    learning_rate=learning_rate,
    n_estimators=n_estimators,
    subsample=1.0,
    max_depth=max_depth,
    min_samples_split=min_samples_split,
    min_samples_leaf=1,
    max_features=None,
    random_state=seed,
  )
