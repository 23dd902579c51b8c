r"""Train a generative model.

    python -m experiments.main --config=experiments/configs/wgan_gp_toy.py --workdir=/tmp/run \
        [--config.optimizer.learning_rate=3e-4 ...]

Running the same command again resumes from the newest intact checkpoint in ``--workdir``.
SIGTERM / SIGINT save a checkpoint at the current step and exit with code 75 (docs/RUNNING.md,
"Preemption and failures"); multi-process runs add ``--peer_timeout_s``.
This file is intentionally thin: the logic is in ``gen_models.trainer``.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (path[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  cli.maybe_initialize_distributed()
  from gen_models import trainer

  config = cli.config_value(_CONFIG)
  cli.run_user_errors_as_exit(lambda: trainer.train(config, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
