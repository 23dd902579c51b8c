"""What every entry point shares: multi-process flags and the one-line error exit."""

from __future__ import annotations

import logging as py_logging
import sys
from collections.abc import Callable

from absl import app, flags, logging

from gen_models import config as config_lib
from gen_models import workdir as workdir_lib
from gen_models.errors import EXIT_ERROR, EXIT_STOPPED, Stopped, UserError

_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0; set to run multi-process."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in [0, num_processes)."
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost", False, "Join a multi-process run detected from the environment (SLURM, Cloud TPU)."
)
_PEER_TIMEOUT = flags.DEFINE_integer(
  "peer_timeout_s",
  60,
  "Multi-process runs: a process silent this long is lost; the others exit with an error line.",
)


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of orbax and friends (dozens per checkpoint), and orbax's warnings (a
  failed restore logs its tracebacks as warnings; our own one-line warning says what failed);
  other libraries' warnings still show."""

  NOISY = ("/orbax/", "/jax/_src/", "/tensorstore/", "/grain/", "/tensorflow_datasets/")

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.name == "asyncio":  # A failed restore's closed-loop noise (below).
      return False
    if "/orbax/" in record.pathname:
      return record.levelno >= py_logging.ERROR
    return record.levelno > py_logging.INFO or not any(s in record.pathname for s in self.NOISY)


def _drop_closed_loop_noise(unraisable) -> None:
  """``sys.unraisablehook`` without the "Event loop is closed" errors of a failed restore.

  When orbax fails to read a garbled checkpoint it closes its event loop while tensorstore still
  has reads in flight; each completion then raises ``RuntimeError: Event loop is closed`` where
  nothing can catch it, and Python prints its traceback (hundreds of them). Those are dropped;
  every other unraisable exception goes to the previous hook.
  """
  e = unraisable.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return
  _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  py_logging.getLogger("asyncio").addFilter(_QuietLibraries())
  sys.unraisablehook = _drop_closed_loop_noise


def maybe_initialize_distributed() -> None:
  """Calls ``jax.distributed.initialize`` when the flags ask for a multi-process run."""
  if _COORDINATOR.value or _MULTIHOST.value:
    from gen_models import devices

    run_user_errors_as_exit(
      lambda: devices.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _PEER_TIMEOUT.value
      )
    )


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  return text or type(e).__name__


def _config_error(e: BaseException) -> str:
  if isinstance(e, (AttributeError, KeyError)):
    return f"unknown config key in --config overrides: {_one_line(e)}"
  return f"bad --config: {_one_line(e.__cause__ or e)}"


def _exit_with(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_ERROR)


def config_value(holder: flags.FlagHolder):
  """The value of a config flag; loading or override failures exit with one line."""
  try:
    value = holder.value
    value.keys()  # A file that failed to load gives an object that raises on first use.
    return value
  except Exception as e:
    _exit_with(_config_error(e))


def parse_flags(argv: list[str]) -> list[str]:
  """``absl`` flag parsing with every failure as one ``error:`` line and exit code 1.

  Config files and ``--config.key=value`` overrides are evaluated while flags are parsed; a typo
  in a key, a bad value or a missing config file otherwise ends in a traceback.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit_with(_one_line(e))
  except Exception as e:  # Raised by ml_collections while applying overrides or loading a file.
    _exit_with(_config_error(e))


def run_user_errors_as_exit(fn: Callable[[], object]) -> object:
  """Runs ``fn``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 1,
  a :class:`Stopped` run its one line on stderr and exit code 75 (``EXIT_STOPPED``)."""
  try:
    return fn()
  except UserError as e:
    logging.flush()
    _exit_with(str(e))
  except Stopped as e:
    logging.flush()
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(EXIT_STOPPED)


def results_main(run: Callable[[], dict], width: int, output: flags.FlagHolder | None = None):
  """The ``main(argv)`` of an evaluation command: no positional arguments, quiet library logs,
  ``run()`` with user errors as one line, its results printed (keys right-aligned to ``width``)
  and, with ``output``, ``wrote <path>``."""

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    results = run_user_errors_as_exit(run)
    print_results(results, width=width)
    if output is not None:
      print(f"wrote {output.value}")

  return main


def print_results(results: dict, width: int) -> None:
  """One ``key  value`` line per result, keys right-aligned to ``width``, floats to 6 digits; a
  population's ``members`` rows each under a ``member I (name)`` heading."""
  for key, value in results.items():
    if key == "members" and isinstance(value, list):
      for row in value:
        print(f"member {row['member']} ({row['name']}):")
        skip = ("member", "name", "seed", "hparams")
        print_results({k: v for k, v in row.items() if k not in skip}, width)
      continue
    shown = f"{value:.6g}" if isinstance(value, float) else f"{value}"
    print(f"{key:>{width}s}  {shown}")


# The commands that write a workdir's ``results/<kind>_step<step>.json`` (``experiments.report``
# reads them and names these when a workdir has none).
RESULTS_COMMANDS = (
  "python -m experiments.evaluate_disentanglement --workdir={workdir}",
  "python -m experiments.evaluate --real=REAL --fake={workdir} --output=OUT.json",
  "python -m experiments.evaluate_likelihood --workdir={workdir} --data=FILE.npy",
)


def results_commands(workdir: str) -> list[str]:
  """:data:`RESULTS_COMMANDS` for ``workdir``."""
  return [c.format(workdir=workdir) for c in RESULTS_COMMANDS]


# Writes indented JSON atomically (a temporary file, then a rename); a UserError if it cannot.
write_json = workdir_lib.write_json


def workdir_members(path: str, member: int | None):
  """The members to evaluate of a population's workdir ``path`` (all, or ``member``); None when
  ``path`` is not a population's workdir (a file, or a single run). A ``member`` out of range,
  or given for something that is not a population, is a one-line error."""
  from gen_models import population

  if not workdir_lib.is_run(path):
    if member is not None:
      raise UserError(f"--member={member} needs a population's workdir, got {path}")
    return None
  config = config_lib.validate(workdir_lib.read_config(path))
  if not population.is_population(config):
    if member not in (None, 0):
      raise UserError(f"--member={member} is out of range: {path} is a single run (member 0)")
    return None
  return population.select(population.members(config), member)


def member_row(member) -> dict:
  """The identifying columns of a member's row in a results JSON."""
  return {
    "member": member.index,
    "name": member.name,
    "seed": member.seed,
    "hparams": member.hparams,
  }


def positive_ints(values: list[str], flag: str) -> list[int]:
  """A list flag's values as integers >= 1; a one-line error otherwise."""
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise UserError(f"--{flag} must be integers, got {values}") from None
  if any(n < 1 for n in out):
    raise UserError(f"--{flag} values must be >= 1, got {out}")
  return out
