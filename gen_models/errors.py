"""The one exception type that reaches a user as a one-line message."""


class UserError(Exception):
  """Bad input or an unrecoverable run condition, reported as one line and exit code 1.

  Raised for things a user can fix (unknown config key, unprepared dataset, unwritable workdir,
  indivisible batch) and for a run that must stop (non-finite loss). Entry points catch it,
  print ``error: <message>`` and exit non-zero; no other exception type is caught.
  """
