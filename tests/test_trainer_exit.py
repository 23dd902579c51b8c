"""``trainer.train``'s exits: what closes in which order, on a clean end and on an error, and
its :class:`trainer.Result`.

The order matters to multi-process runs: the last checkpoint is complete on disk and the writer
closed before the peers hear "done" (``tests/test_multiprocess.py`` runs it for real).
"""

import jax
import pytest
from test_trainer import toy_config

from gen_models import devices as dev
from gen_models import trainer
from gen_models.checkpointing import Checkpointer
from gen_models.logs import MetricWriter
from gen_models.preemption import StopRequests
from gen_models.workdir_lock import WorkdirLock

CLOSING = [
  "Checkpointer.wait",
  "Checkpointer.close",
  "MetricWriter.close",
  "peers exit",
  "StopRequests.__exit__",
  "WorkdirLock.release",
]


class _Peers:
  """Stands for :func:`gen_models.devices.watch_peers`: records its calls."""

  def __init__(self, events: list):
    self.events = events

  def __enter__(self):
    return self

  def await_lost_peer(self) -> None:
    self.events.append("await_lost_peer")

  def __exit__(self, kind, exc, tb) -> None:
    self.events.append("peers exit")
    self.told = kind


def _recorded(monkeypatch, loop) -> tuple[list, _Peers]:
  """Spies on every exit of ``train``; ``loop`` stands for its loop (no step runs)."""
  events = []

  def spy(cls, name):
    original = getattr(cls, name)

    def call(self, *args):
      events.append(f"{cls.__name__}.{name}")
      return original(self, *args)

    monkeypatch.setattr(cls, name, call)

  spy(Checkpointer, "wait")
  spy(Checkpointer, "close")
  spy(MetricWriter, "close")
  spy(StopRequests, "__exit__")
  spy(WorkdirLock, "release")
  peers = _Peers(events)
  monkeypatch.setattr(dev, "watch_peers", lambda: peers)

  def fake_loop(*args):
    events.append("loop")
    return loop()

  monkeypatch.setattr(trainer, "_loop", fake_loop)
  return events, peers


def test_a_clean_end_completes_the_checkpoint_before_the_peers_hear_done(tmp_path, monkeypatch):
  events, peers = _recorded(monkeypatch, lambda: {None: {"eval/w1": 0.5}})
  result = trainer.train(toy_config(), str(tmp_path / "run"), devices=jax.devices()[:1])
  assert events[events.index("loop") + 1 :] == CLOSING
  assert peers.told is None  # "done"
  assert result["eval/w1"] == 0.5 and dict(result) == {"eval/w1": 0.5}
  assert result.members == [{"eval/w1": 0.5}]


@pytest.mark.parametrize("error", [RuntimeError, jax.errors.JaxRuntimeError])
def test_an_error_closes_in_the_same_order_and_tells_the_peers(tmp_path, monkeypatch, error):
  def loop():
    raise error("boom")

  events, peers = _recorded(monkeypatch, loop)
  with pytest.raises(error, match="boom"):
    trainer.train(toy_config(), str(tmp_path / "run"), devices=jax.devices()[:1])
  # A failed collective first gives the peer watch time to name a lost process.
  first = ["await_lost_peer"] if error is jax.errors.JaxRuntimeError else []
  assert events[events.index("loop") + 1 :] == first + CLOSING
  assert peers.told is error  # "failed (<error>: boom)"
  with WorkdirLock(str(tmp_path / "run")):  # Released.
    pass


def test_a_population_returns_each_members_metrics_in_member_order(tmp_path, monkeypatch):
  _recorded(monkeypatch, lambda: {1: {"loss": 2.0}, 0: {"loss": 1.0}})
  config = toy_config(**{"population.seeds": 2})
  result = trainer.train(config, str(tmp_path / "pop"), devices=jax.devices()[:1])
  assert result.members == [{"loss": 1.0}, {"loss": 2.0}]
  with pytest.raises(TypeError, match=r"population of 2 members: read \.members\[i\]"):
    result["loss"]
  one = trainer.Result([{"loss": 1.0}], population=False)
  assert one["loss"] == 1.0 and list(one) == ["loss"] and len(one) == 1
