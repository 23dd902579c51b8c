"""Helpers shared by config files: parsing the ``:arg`` after a config path."""

from __future__ import annotations


def parse_arg(arg: str | None, **defaults):
  """``"smoke,25gaussians"`` → dict of flags; words not naming a flag fill ``variant``.

  ``defaults`` maps flag names to their default (``False`` for on/off words). Any other word is
  taken as the value of the ``variant`` key, if given in ``defaults``.
  """
  out = dict(defaults)
  for word in filter(None, (arg or "").split(",")):
    if word in defaults and isinstance(defaults[word], bool):
      out[word] = True
    elif "variant" in defaults:
      out["variant"] = word
    else:
      raise ValueError(f"unknown config argument {word!r}; known: {sorted(defaults)}")
  return out
