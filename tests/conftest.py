"""Test setup: 8 fake CPU devices (before JAX starts), and shared helpers."""

import functools
import os
import shutil
import subprocess
import sys
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
# pytest -n 2 runs two workers on two cores: one BLAS thread each. Two spinning OpenBLAS threads
# per worker made a 2048² eigh 10× slower (measured), and subprocesses inherit this.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

# One persistent XLA compilation cache for the session, shared by the xdist workers and every
# subprocess they start (all inherit the environment): a step that dozens of tests compile (the
# toy smoke config's) is compiled once. A cached executable is the one the compiler produced, so
# results are unchanged. The controller process made the directory and removes it at the end.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gen_models_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI draws the same hypothesis examples on every run: a red CI is reproducible, never a fluke.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
  settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
  """Modules with tests marked ``slow`` run first, and those tests first within them (otherwise
  the order is kept, and each module's tests stay together for its module fixtures): with
  ``-n 2`` a minutes-long test scheduled last would leave the other worker idle until it ends."""
  modules = {}
  for item in items:
    modules.setdefault(item.module.__name__, len(modules))
  slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
  items.sort(
    key=lambda item: (
      item.module.__name__ not in slow_modules,
      modules[item.module.__name__],
      item.get_closest_marker("slow") is None,
    )
  )


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# For functions a test compiles once or a few times: without XLA's backend optimisation the
# compile is many times faster and computes the same function (the trainer compiles ``init``
# this way). ``from conftest import fast_jit``.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture
def x64():
  """Float64 for the test (``jax.enable_x64``), so that agreement is to round-off."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS)"


def run_cli(module: str, *args: str, timeout: float = 300, env: dict | None = None):
  """Runs ``python -m module args`` from the repo root; returns the CompletedProcess."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_one_line_error(proc, *fragments: str) -> str:
  """The process failed with ``error: ...`` as its last stderr line and no traceback."""
  assert proc.returncode != 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr[-2000:]
  for fragment in fragments:
    assert fragment in last, last
  return last
