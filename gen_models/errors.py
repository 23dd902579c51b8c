"""The exceptions that reach a user as one line, and the exit codes of the entry points.

Exit codes: :data:`EXIT_OK` (0) the run finished; :data:`EXIT_ERROR` (1) an ``error:`` line (bad
input, or a run that cannot go on: non-finite loss, no intact checkpoint, a workdir in use, a
lost peer process); :data:`EXIT_STOPPED` (75, ``EX_TEMPFAIL`` of ``sysexits.h``: "try again")
stopped by SIGTERM or SIGINT after saving a checkpoint, so the same command resumes.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STOPPED = 75


class UserError(Exception):
  """Bad input or an unrecoverable run condition, reported as one line and exit code 1.

  Raised for things a user can fix (unknown config key, unprepared dataset, unwritable workdir,
  indivisible batch) and for a run that must stop (non-finite loss). Entry points catch it,
  print ``error: <message>`` and exit non-zero; no other exception type is caught.
  """


class Stopped(Exception):
  """A run stopped by a signal after its checkpoint at ``step`` was completely written.

  Entry points print the message (``stopped by SIGTERM at step N; checkpoint PATH; run the same
  command to resume``) and exit with :data:`EXIT_STOPPED`.
  """

  def __init__(self, signal_name: str, step: int, checkpoint: str):
    super().__init__(
      f"stopped by {signal_name} at step {step}; checkpoint {checkpoint}; "
      "run the same command to resume"
    )
    self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def first_line(e: BaseException, max_len: int | None = None) -> str:
  """The first line of ``e``'s message (its type's name if empty), cut to ``max_len`` characters
  with ``...`` (library messages, orbax's in particular, run to hundreds of lines)."""
  lines = str(e).strip().splitlines()
  text = lines[0] if lines else type(e).__name__
  if max_len is not None and len(text) > max_len:
    text = text[: max_len - 3] + "..."
  return text
