"""Reports of a population's evaluation results: per-setting statistics, rank correlations with
the hyperparameters, the seed-versus-hyperparameter variance split, markdown and figures.

A *row* is one member's results: ``workdir``, ``member`` (index), ``name``, ``seed``, ``hparams``
(``{config key: value}``, empty for a single run), ``steps`` (``{kind: checkpoint step}``) and its
scores (``{"mig/mig": 0.21, ...}``). Rows come from a workdir's ``results/<kind>_step<step>.json``
files (:func:`load_workdir`, which the evaluation commands write) or from one results JSON
(:func:`load_results_file`). :func:`summarize` groups rows by hyperparameter setting (the tuple of
their hparam values) and reports, per metric and setting, n, median, quartiles and range; per
metric and swept key, Spearman's rank correlation with the value; per metric, the fraction of the
variance between settings (Locatello et al. 2019's "the random seed matters more than the
hyperparameter": a small fraction).

Pure Python, numpy and scipy; matplotlib is imported by :func:`plot_metric` only. The workdir's
files are found and read by :mod:`gen_models.workdir`; neither imports JAX.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from gen_models import workdir as workdir_lib
from gen_models.errors import UserError
from gen_models.workdir import is_score

rankdata = stats.rankdata  # Ranks 1..n, ties given the average of the ranks they span.


def default_metric(key: str) -> bool:
  """Is a score reported unless ``metrics`` says otherwise? Spreads (``*_std``, ``*_stderr``)
  are scores of their own but not reported by default."""
  return not key.endswith(("_std", "_stderr"))


def _scores(row: dict) -> dict:
  return {k: v for k, v in row.items() if is_score(k, v)}


def rows_of(
  results, source: str, workdir: str | None, seed=None, kind: str | None = None
) -> list[dict]:
  """The rows of a parsed results JSON ``results`` read from ``source``: a population's
  ``{"members": [row, ...]}``, or a single run's flat row (member 0, named after ``workdir`` or
  the file, its seed ``seed`` if given, else the row's, and no hparams). With ``kind``, a row's
  ``step`` becomes its ``steps[kind]``.

  Raises:
    UserError: ``results`` is not a results object.
  """
  if not isinstance(results, dict):
    raise UserError(f"{source}: expected a JSON object of results, got {type(results).__name__}")
  where = workdir or source
  if "members" not in results:
    name = os.path.basename(os.path.normpath(workdir or os.path.splitext(source)[0]))
    scores = _scores(results)
    row_seed = seed if seed is not None else results.get("seed")
    return [_row(where, 0, name, row_seed, {}, kind, results.get("step"), scores)]
  members = results["members"]
  if not isinstance(members, list) or not all(
    isinstance(r, dict) and isinstance(r.get("member"), int) for r in members
  ):
    raise UserError(f"{source}: 'members' must be a list of rows, each with its 'member' index")
  out = []
  for r in members:
    hparams = r.get("hparams") or {}
    if not isinstance(hparams, dict):
      raise UserError(f"{source}: member {r['member']}'s 'hparams' is not an object")
    name = r.get("name", f"member {r['member']}")
    step = r.get("step")
    out.append(_row(where, r["member"], name, r.get("seed"), hparams, kind, step, _scores(r)))
  return out


def _row(workdir, member, name, seed, hparams, kind, step, scores) -> dict:
  return {
    "workdir": workdir,
    "member": member,
    "name": name,
    "seed": seed,
    "hparams": dict(hparams),
    "steps": {kind: step} if kind is not None and isinstance(step, int) else {},
    **scores,
  }


def load_results_file(path: str) -> list[dict]:
  """The rows of one results JSON (``--results=FILE``); a single run's is one row."""
  if not os.path.isfile(path):
    raise UserError(f"--results={path} does not exist")
  name = os.path.basename(path)
  kind, _ = workdir_lib.parse_results_name(name) or (os.path.splitext(name)[0], 0)
  return rows_of(workdir_lib.read_json(path), path, None, kind=kind)


def _config_seed(workdir: str):
  return workdir_lib.read_config(workdir).get("seed") if workdir_lib.is_run(workdir) else None


def load_workdir(path: str, make_results: Sequence[str] = ()) -> list[dict]:
  """Every member's row of the workdir ``path``: its ``results/*.json``, the latest step of each
  kind, merged by member index (a score that two kinds both report: the kind later by name).
  Names, seeds and hparams come from ``members.json`` where it lists the member (a row's
  ``seed`` may be the evaluation's own seed); a single run's seed from its ``config.json``.
  ``make_results``: the commands that would make results, named in the error when there are
  none (the command layer knows them).

  Raises:
    UserError: ``path`` is not a directory, has no results, or a file in it is malformed.
  """
  if not os.path.isdir(path):
    raise UserError(f"--workdir={path} does not exist or is not a directory")
  files = workdir_lib.results_files(path)
  if not files:
    how = f"; make them with {' or '.join(make_results)}" if make_results else ""
    raise UserError(f"no results in {os.path.join(path, workdir_lib.RESULTS_DIR)}{how}")
  known = workdir_lib.read_members(path)
  seed = _config_seed(path)
  merged: dict[int, dict] = {}
  for kind in sorted(files):
    step, file = files[kind]
    results = workdir_lib.read_json(file)
    single = isinstance(results, dict) and "members" not in results
    for r in rows_of(results, file, path, seed if single else None, kind):
      row = merged.setdefault(r["member"], r)
      if row is not r:
        row.update({k: v for k, v in r.items() if k not in ("steps", "hparams")})
      row["steps"][kind] = step
  for index, row in merged.items():
    if index in known:
      m = known[index]
      row.update(name=m.get("name"), seed=m.get("seed"), hparams=dict(m.get("hparams") or {}))
  return [merged[i] for i in sorted(merged)]


def metric_names(rows: list[dict], metrics: list[str] | None = None) -> list[str]:
  """The metrics to report: ``metrics`` (each checked to be a score of some row), or every score
  of the rows that :func:`default_metric` keeps, in order of first appearance.

  Raises:
    UserError: an unknown metric, or no scores at all.
  """
  known: dict[str, None] = {}
  for r in rows:
    for k, v in r.items():
      if k not in ("workdir", "name", "steps") and is_score(k, v):
        known.setdefault(k, None)
  if metrics:
    unknown = [m for m in metrics if m not in known]
    if unknown:
      raise UserError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(known) or '-'}")
    return list(metrics)
  names = [k for k in known if default_metric(k)]
  if not names:
    raise UserError("the results hold no scores")
  return names


def _value(row: dict, metric: str) -> float | None:
  v = row.get(metric)
  if v is None or not math.isfinite(float(v)):
    return None
  return float(v)


def _sort_key(setting: tuple) -> tuple:
  return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in setting)


def _format_value(v) -> str:
  if v is None:
    return "-"
  return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def short_names(keys: list[str]) -> dict[str, str]:
  """The last part of each key (``vae.beta`` → ``beta``), the whole key where that is ambiguous
  (as members' names are made)."""
  leaves = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves, strict=True)}


def setting_label(keys: list[str], setting: tuple) -> str:
  """``"4"`` with one swept key, ``"beta=4,lr=0.0001"`` with several, ``"all"`` with none."""
  if not keys:
    return "all"
  if len(keys) == 1:
    return _format_value(setting[0])
  short = short_names(keys)
  return ",".join(f"{short[k]}={_format_value(v)}" for k, v in zip(keys, setting, strict=True))


def spearman_test(x, y) -> tuple[float | None, float | None]:
  """Spearman's ρ of ``x`` and ``y`` ``(n,)`` (Pearson's correlation of their average ranks:
  ``scipy.stats.spearmanr``) and its two-sided p-value; ``(None, None)`` when n < 2 or either is
  constant, a p-value of None where scipy gives none."""
  if len(x) < 2:
    return None, None
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", stats.ConstantInputWarning)
    result = stats.spearmanr(np.asarray(x, np.float64), np.asarray(y, np.float64))
  rho, p = float(result.statistic), float(result.pvalue)
  if not math.isfinite(rho):
    return None, None
  return rho, p if math.isfinite(p) else None


def spearman(x, y) -> float | None:
  """Spearman's ρ of ``x`` and ``y`` ``(n,)``; None when n < 2 or either is constant."""
  return spearman_test(x, y)[0]


def between_fraction(values: list[np.ndarray]) -> float | None:
  """Of the total variance of the pooled ``values`` (a list of groups' values), the fraction
  between the groups: ``Σ_g n_g (mean_g − mean)² / Σ (x − mean)²`` (η²). The rest is within
  groups, i.e. between seeds. None when the total variance is 0 or there are no values."""
  pooled = np.concatenate([np.asarray(v, np.float64) for v in values]) if values else np.zeros(0)
  if len(pooled) == 0:
    return None
  mean = pooled.mean()
  total = float(np.sum((pooled - mean) ** 2))
  if total == 0:
    return None
  between = sum(len(v) * (np.mean(v) - mean) ** 2 for v in values if len(v))
  return float(between / total)


def _stats(values: np.ndarray) -> dict:
  if len(values) == 0:
    return dict.fromkeys(("median", "q25", "q75", "min", "max"))
  q25, median, q75 = np.percentile(values, [25, 50, 75])
  return {
    "median": float(median),
    "q25": float(q25),
    "q75": float(q75),
    "min": float(np.min(values)),
    "max": float(np.max(values)),
  }


def summarize(rows: list[dict], metrics: list[str] | None = None) -> dict:
  """The statistics of ``rows`` per hyperparameter setting and metric.

  Returns:
    ``{"num_members", "workdirs", "keys" (the hparam keys, sorted), "settings": [{"label",
    "hparams"}], "metrics": {metric: {"n", "missing", "groups": [{"label", "hparams", "n",
    "missing", "median", "q25", "q75", "min", "max", "values", "members"}], "spearman": {key:
    {"rho", "p_value", "n"}}, "between_fraction"}}}``. Rows whose value is missing or not finite
    are left out of a metric's numbers and counted in its ``missing``; quartiles are numpy's
    linear percentiles; undefined numbers (a constant key, an empty group) are None.

  Raises:
    UserError: no rows, an unknown metric.
  """
  if not rows:
    raise UserError("no results to report")
  names = metric_names(rows, metrics)
  keys = sorted({k for r in rows for k in r["hparams"]})
  setting_of = [tuple(r["hparams"].get(k) for k in keys) for r in rows]
  settings = sorted(set(setting_of), key=_sort_key)
  out = {
    "num_members": len(rows),
    "workdirs": list(dict.fromkeys(r["workdir"] for r in rows)),
    "keys": keys,
    "settings": [
      {"label": setting_label(keys, s), "hparams": dict(zip(keys, s, strict=True))}
      for s in settings
    ],
    "metrics": {},
  }
  for metric in names:
    values = [_value(r, metric) for r in rows]
    groups, group_values = [], []
    for s in settings:
      idx = [i for i, si in enumerate(setting_of) if si == s]
      got = [i for i in idx if values[i] is not None]
      v = np.array([values[i] for i in got], np.float64)
      group_values.append(v)
      groups.append(
        {
          "label": setting_label(keys, s),
          "hparams": dict(zip(keys, s, strict=True)),
          "n": len(got),
          "missing": len(idx) - len(got),
          **_stats(v),
          "values": v.tolist(),
          "members": [rows[i]["name"] for i in got],
        }
      )
    correlations = {}
    for j, key in enumerate(keys):
      pairs = [
        (float(setting_of[i][j]), values[i])
        for i in range(len(rows))
        if values[i] is not None and isinstance(setting_of[i][j], (int, float))
      ]
      x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
      rho, p_value = spearman_test(x, y)
      correlations[key] = {"rho": rho, "p_value": p_value, "n": len(pairs)}
    n = sum(g["n"] for g in groups)
    out["metrics"][metric] = {
      "n": n,
      "missing": len(rows) - n,
      "groups": groups,
      "spearman": correlations,
      "between_fraction": between_fraction(group_values),
    }
  return out


def _g(x) -> str:
  """A number to 3 significant digits (``-`` for None)."""
  return "-" if x is None else f"{x:.3g}"


def write_markdown(summary: dict) -> str:
  """The summary as markdown: per metric a table (one row per setting: n, median, IQR as
  ``[q25, q75]``, min–max) and a line with Spearman's ρ per key and the between-setting variance
  fraction; numbers to 3 significant digits."""
  keys = summary["keys"]
  head = ", ".join(keys) if keys else "none (seeds only)"
  workdirs = ", ".join(str(w) for w in summary["workdirs"])
  lines = [
    f"# Report: {summary['num_members']} members",
    "",
    f"From {workdirs}. Hyperparameters: {head}.",
  ]
  column = keys[0] if len(keys) == 1 else "setting"
  for metric, m in summary["metrics"].items():
    lines += ["", f"## {metric}", "", f"| {column} | n | median | IQR | min–max |"]
    lines.append("|---|---:|---:|---|---|")
    for g in m["groups"]:
      iqr = f"[{_g(g['q25'])}, {_g(g['q75'])}]"
      span = f"{_g(g['min'])}–{_g(g['max'])}"
      n = f"{g['n']}" + (f" ({g['missing']} missing)" if g["missing"] else "")
      lines.append(f"| {g['label']} | {n} | {_g(g['median'])} | {iqr} | {span} |")
    parts = []
    for key, c in m["spearman"].items():
      p = f", p = {_g(c['p_value'])}" if c["p_value"] is not None else ""
      parts.append(f"Spearman ρ({key}) = {_g(c['rho'])} (n = {c['n']}{p})")
    frac = m["between_fraction"]
    parts.append(
      f"variance between settings: {_g(frac)} of the total"
      + ("" if frac is None else f" (between seeds: {_g(1 - frac)})")
    )
    if m["missing"]:
      parts.append(f"missing: {m['missing']}")
    lines += ["", "; ".join(parts) + "."]
  return "\n".join(lines) + "\n"


def metric_filename(metric: str) -> str:
  """``mig/mig`` → ``mig_mig`` (the figure's file name, without extension)."""
  return re.sub(r"[^A-Za-z0-9._-]", "_", metric)


def plot_metric(summary: dict, metric: str, path: str) -> list[str]:
  """A box per setting of ``metric`` with each member as a jittered point (seeded jitter), as a
  4 × 3 inch figure at 10 pt: ``path`` (PNG, 150 dpi) and the same name ``.pdf``. Returns the
  paths written."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  m = summary["metrics"][metric]
  keys = summary["keys"]
  labels = [g["label"] for g in m["groups"]]
  rng = np.random.default_rng(0)
  with plt.rc_context({"font.size": 10}):
    fig, ax = plt.subplots(figsize=(4, 3))
    filled = [(i, g["values"]) for i, g in enumerate(m["groups"]) if g["values"]]
    if filled:
      ax.boxplot(
        [v for _, v in filled],
        positions=[i for i, _ in filled],
        widths=0.5,
        whis=(0, 100),
        showfliers=False,
        medianprops={"color": "black"},
      )
      for i, v in filled:
        x = i + rng.uniform(-0.15, 0.15, len(v))
        ax.scatter(x, v, s=12, alpha=0.7, color="tab:blue", zorder=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(keys) > 1 or len(labels) > 6 else 0)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xlabel(keys[0] if len(keys) == 1 else "setting" if keys else "")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over {m['n']} members")
    fig.tight_layout()
    pdf = os.path.splitext(path)[0] + ".pdf"
    try:
      fig.savefig(path, dpi=150)
      fig.savefig(pdf)
    except OSError as e:
      raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
      plt.close(fig)
  return [path, pdf]
