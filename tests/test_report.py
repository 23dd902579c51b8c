"""``gen_models.report`` and ``experiments.report``: a population's results as statistics per
hyperparameter setting (checked against numbers worked out by hand), markdown, figures and the
command's one-line errors."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from gen_models import report
from gen_models.errors import UserError

# vae.beta in {1, 4} × seeds 0..2 (members 0..5, beta = 1 first).
MIG = [0.1, 0.2, 0.3, 0.4, 0.9, 0.5]
SAP = [0.0, 0.1, math.nan, 0.3, 0.4, 0.5]  # Member 2's SAP is NaN: left out, counted missing.


def _write(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def _members(betas=(1.0, 4.0), seeds=3, first=0):
  out = []
  for beta, seed in itertools.product(betas, range(seeds)):
    i = first + len(out)
    out.append(
      {
        "index": i,
        "name": f"beta={beta:g},seed={seed}",
        "seed": seed,
        "hparams": {"vae.beta": beta},
      }
    )
  return out


def _population(workdir, members, scores: dict[str, list], kind="disentanglement", step=100):
  """A workdir with ``members.json`` and one results file: each row's scores from ``scores``;
  its ``seed`` is the evaluation's (0), as evaluate_disentanglement writes it."""
  _write(workdir / "members.json", {"members": members})
  rows = []
  for j, m in enumerate(members):
    row = {"member": j, "name": m["name"], "seed": 0, "hparams": m["hparams"], "step": step}
    row.update({k: v[j] for k, v in scores.items()}, dataset="dsprites", num_train=10, num_eval=5)
    rows.append(row)
  _write(workdir / "results" / f"{kind}_step{step:08d}.json", {"members": rows})


@pytest.fixture
def workdir(tmp_path):
  w = tmp_path / "pop"
  _population(w, _members(), {"mig/mig": MIG, "sap/sap": SAP})
  # An older evaluation (ignored: the latest step of a kind wins) and a second kind.
  _population(w, _members(), {"mig/mig": [9.0] * 6, "sap/sap": [9.0] * 6}, step=50)
  _population(w, _members(), {"fid": [10.0, 20, 30, 40, 50, 60]}, kind="evaluate", step=100)
  return w


def test_load_workdir_merges_kinds_latest_step_and_members_json(workdir):
  rows = report.load_workdir(str(workdir))
  assert [r["member"] for r in rows] == list(range(6))
  assert [r["mig/mig"] for r in rows] == MIG
  assert [r["fid"] for r in rows] == [10.0, 20, 30, 40, 50, 60]
  r = rows[4]
  assert (r["name"], r["seed"], r["hparams"]) == ("beta=4,seed=1", 1, {"vae.beta": 4.0})
  assert r["steps"] == {"disentanglement": 100, "evaluate": 100}
  assert r["workdir"] == str(workdir)
  assert not {"step", "num_train", "num_eval", "dataset"} & set(r)


def test_summary_numbers_equal_hand_computed_values(workdir):
  s = report.summarize(report.load_workdir(str(workdir)), ["mig/mig", "sap/sap"])
  assert s["keys"] == ["vae.beta"] and [g["label"] for g in s["settings"]] == ["1", "4"]
  mig = s["metrics"]["mig/mig"]
  low, high = mig["groups"]
  # beta=1: 0.1, 0.2, 0.3 → median 0.2, quartiles halfway between neighbours (linear).
  assert low["n"] == 3
  assert (low["median"], low["q25"], low["q75"]) == pytest.approx((0.2, 0.15, 0.25), abs=1e-15)
  # beta=4: sorted 0.4, 0.5, 0.9 → median 0.5, q25 0.45, q75 0.7.
  assert (high["median"], high["q25"], high["q75"], high["min"], high["max"]) == pytest.approx(
    (0.5, 0.45, 0.7, 0.4, 0.9)
  )
  assert high["values"] == [0.4, 0.9, 0.5] and high["members"][1] == "beta=4,seed=1"
  # Ranks of beta: 2,2,2,5,5,5; of MIG: 1,2,3,4,6,5. Centred: ±1.5 and (-2.5,-1.5,-.5,.5,2.5,1.5)
  # Σ dx·dy = 13.5, Σ dx² = 13.5, Σ dy² = 17.5 → ρ = √(13.5 / 17.5).
  assert mig["spearman"]["vae.beta"]["rho"] == pytest.approx(math.sqrt(13.5 / 17.5), abs=1e-12)
  # Mean 0.4, group means 0.2 and 0.6: between 6·0.04 = 0.24; total Σ(x − 0.4)² = 0.4.
  assert mig["between_fraction"] == pytest.approx(0.6, abs=1e-12)
  sap = s["metrics"]["sap/sap"]
  assert (sap["n"], sap["missing"], sap["groups"][0]["missing"]) == (5, 1, 1)
  assert sap["groups"][0]["values"] == [0.0, 0.1] and sap["groups"][0]["median"] == 0.05
  # Left out: x = 1,1,4,4,4 (ranks 1.5,1.5,4,4,4), y = 0,.1,.3,.4,.5 (ranks 1..5); centred
  # dx = (-1.5,-1.5,1,1,1), dy = (-2,-1,0,1,2): Σ dx·dy = 7.5, Σ dx² = 7.5, Σ dy² = 10.
  assert sap["spearman"]["vae.beta"]["rho"] == pytest.approx(math.sqrt(7.5 / 10), abs=1e-12)
  assert sap["spearman"]["vae.beta"]["n"] == 5
  # Mean 0.26; group means 0.05 (n=2), 0.4 (n=3): between 2·0.21² + 3·0.14² = 0.147; total
  # Σ(x − 0.26)² = 0.0676 + 0.0256 + 0.0016 + 0.0196 + 0.0576 = 0.172.
  assert sap["between_fraction"] == pytest.approx(0.147 / 0.172, abs=1e-12)


def test_spearman_ties_match_scipy_and_brute_force():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for n in (2, 3, 7, 40):
    x = rng.integers(0, 4, n).astype(float)  # Many ties.
    y = rng.integers(0, 5, n).astype(float)
    want = stats.spearmanr(x, y).statistic
    got = report.spearman(x, y)
    if np.isnan(want):
      assert got is None
    else:
      assert got == pytest.approx(want, abs=1e-12)
  np.testing.assert_array_equal(report.rankdata([3.0, 1.0, 3.0, 2.0, 3.0]), [4, 1, 4, 2, 4])
  assert report.spearman([1, 2, 3], [3, 2, 1]) == -1.0
  assert report.spearman([1, 1, 1], [1, 2, 3]) is None


def test_spearman_equals_the_former_own_implementation_with_ties():
  # ρ and p as the report's own rank code (before scipy.stats.spearmanr; p was scipy's) gave them.
  x, y = [1, 1, 2, 2, 2, 3, 3, 4], [0.5, 0.1, 0.1, 0.3, 0.3, 0.9, 0.2, 0.9]
  rho, p = report.spearman_test(x, y)
  assert rho == pytest.approx(0.49065338146265813, rel=1e-14)
  assert p == pytest.approx(0.21701159843491197, rel=1e-12)
  rho, p = report.spearman_test([4, 4, 1, 1, 1], [0, 0.1, 0.3, 0.4, 0.5])
  assert (rho, p) == pytest.approx((-0.8660254037844386, 0.05766888562243736), rel=1e-12)
  assert report.spearman_test([2.0, 2.0, 2.0], [1, 2, 3]) == (None, None)
  assert report.spearman_test([1.0], [1.0]) == (None, None)


def test_the_commands_named_for_missing_results_exist():
  from experiments import cli

  for command in cli.results_commands("W"):
    python, dash_m, module, *_ = command.split()
    assert (python, dash_m) == ("python", "-m") and importlib.util.find_spec(module), command


def test_between_fraction_edge_cases():
  assert report.between_fraction([np.array([1.0, 3.0])]) == 0.0  # One setting: all seeds.
  assert report.between_fraction([np.array([1.0, 1.0]), np.array([5.0])]) == 1.0
  assert report.between_fraction([np.array([2.0]), np.array([2.0])]) is None


def test_several_swept_keys_and_pooled_workdirs(tmp_path):
  """A 2 × 2 grid split over two workdirs (lr 1e-4 in one, 1e-3 in the other): pooled into one
  grid, each row keeping its workdir."""
  a, b = tmp_path / "a", tmp_path / "b"
  for w, lr in ((a, 1e-4), (b, 1e-3)):
    members = _members(seeds=2)
    for m in members:
      m["hparams"]["optimizer.learning_rate"] = lr
    _population(w, members, {"mig/mig": [lr * 1000 + i for i in range(4)]})
  rows = report.load_workdir(str(a)) + report.load_workdir(str(b))
  s = report.summarize(rows)
  assert s["keys"] == ["optimizer.learning_rate", "vae.beta"]
  assert [g["label"] for g in s["settings"]] == [
    "learning_rate=0.0001,beta=1",
    "learning_rate=0.0001,beta=4",
    "learning_rate=0.001,beta=1",
    "learning_rate=0.001,beta=4",
  ]
  assert s["workdirs"] == [str(a), str(b)]
  assert [g["values"] for g in s["metrics"]["mig/mig"]["groups"]] == [
    [0.1, 1.1],
    [2.1, 3.1],
    [1.0, 2.0],
    [3.0, 4.0],
  ]
  assert set(s["metrics"]["mig/mig"]["spearman"]) == {"optimizer.learning_rate", "vae.beta"}
  assert "| setting |" in report.write_markdown(s)


def test_single_run_results_file_and_workdir(tmp_path):
  flat = {"mig/mig": 0.25, "beta_vae/eval_accuracy": 0.8, "step": 7, "seed": 3, "num_eval": 5}
  _write(tmp_path / "one.json", flat)
  [row] = report.load_results_file(str(tmp_path / "one.json"))
  assert (row["member"], row["seed"], row["hparams"], row["name"]) == (0, 3, {}, "one")
  assert row["steps"] == {"one": 7} and row["mig/mig"] == 0.25
  run = tmp_path / "run"
  _write(run / "config.json", {"seed": 11, "model": "vae"})
  _write(run / "results" / "disentanglement_step00000007.json", flat)
  [row] = report.load_workdir(str(run))
  assert row["seed"] == 11  # The run's seed, not the evaluation's.
  s = report.summarize([row])
  assert s["keys"] == [] and s["metrics"]["mig/mig"]["groups"][0]["label"] == "all"
  assert s["metrics"]["mig/mig"]["between_fraction"] is None


def test_markdown_has_the_numbers(workdir):
  md = report.write_markdown(report.summarize(report.load_workdir(str(workdir))))
  assert "## mig/mig" in md and "## fid" in md and "## sap/sap" in md
  assert "| 4 | 3 | 0.5 | [0.45, 0.7] | 0.4–0.9 |" in md
  assert "| 1 | 2 (1 missing) | 0.05 | [0.025, 0.075] | 0–0.1 |" in md
  assert "Spearman ρ(vae.beta) = 0.878" in md  # √(13.5/17.5) = 0.8783
  assert "variance between settings: 0.6 of the total (between seeds: 0.4)" in md


def test_bad_input_is_a_user_error(tmp_path, workdir):
  with pytest.raises(UserError, match=r"no results in \S*results$"):  # The commands: the CLI's.
    report.load_workdir(str(tmp_path))
  with pytest.raises(UserError, match=r"results; make them with python -m x --workdir=w or y$"):
    report.load_workdir(str(tmp_path), ["python -m x --workdir=w", "y"])
  (workdir / "results" / "evaluate_step00000100.json").write_text("{not json")
  with pytest.raises(UserError, match="is not valid JSON"):
    report.load_workdir(str(workdir))
  _write(tmp_path / "bad.json", {"members": [{"name": "x"}]})
  with pytest.raises(UserError, match="'members' must be a list of rows"):
    report.load_results_file(str(tmp_path / "bad.json"))
  with pytest.raises(UserError, match="unknown metric"):
    report.summarize([{"workdir": "w", "name": "a", "hparams": {}, "mig/mig": 1.0}], ["mog"])


def test_cli_writes_report_and_figures(workdir, tmp_path):
  out = tmp_path / "out"
  proc = run_cli(
    "experiments.report", f"--workdir={workdir}", f"--output={out}", "--metrics=mig/mig,sap/sap"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| 1 | 3 | 0.2 | [0.15, 0.25] | 0.1–0.3 |" in proc.stdout
  assert f"wrote {out / 'summary.md'}" in proc.stdout
  summary = json.loads((out / "summary.json").read_text())
  assert summary["metrics"]["mig/mig"]["between_fraction"] == pytest.approx(0.6)
  assert list(summary["metrics"]) == ["mig/mig", "sap/sap"]
  assert (out / "summary.md").read_text() in proc.stdout
  for name in ("mig_mig.png", "mig_mig.pdf", "sap_sap.png", "sap_sap.pdf"):
    assert (out / name).stat().st_size > 1000, name
  assert (out / "mig_mig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  ("args", "fragment"),
  [
    (["--workdir={tmp}/missing"], "--workdir={tmp}/missing does not exist"),
    (["--workdir={workdir}", "--metrics=mig/mog"], "unknown metric(s) mig/mog; known: mig/mig"),
    (["--workdir={workdir}", "--output={workdir}/members.json/x"], "cannot create --output="),
    (["--workdir={tmp}"], "make them with python -m experiments.evaluate_disentanglement"),
  ],
)
def test_cli_bad_input_is_one_line(workdir, tmp_path, args, fragment):
  args = [a.format(tmp=tmp_path, workdir=workdir) for a in args]
  if not any(a.startswith("--output") for a in args):
    args.append(f"--output={tmp_path / 'out'}")
  proc = run_cli("experiments.report", *args)
  assert_one_line_error(proc, fragment.format(tmp=tmp_path, workdir=workdir))
