r"""Convert the published FID Inception weights (PyTorch) to the project's ``.npz`` format.

    python -m experiments.convert_inception_weights \
        --input=pt_inception-2015-12-05-6726825d.pth \
        --output=~/.cache/gen_models/inception_v3_fid.npz

The input is pytorch-fid's port of the 2015-12-05 TensorFlow Inception graph,
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(a PyTorch ``state_dict``, zip or legacy format). It is read without torch by a restricted
unpickler that accepts only tensors in an ``OrderedDict`` (``gen_models.metrics.torch_reader``),
renamed and transposed to Flax layout, checked against the model's variable shapes and written
as one ``.npz`` (no pickle) that ``gen_models.metrics.inception.load_variables`` reads. The
default ``--output`` is where the FID code looks first (``$GEN_MODELS_INCEPTION_WEIGHTS``, else
``$XDG_CACHE_HOME/gen_models/inception_v3_fid.npz``).
"""

from __future__ import annotations

import hashlib
import os

from absl import app, flags

from experiments import cli
from gen_models.errors import UserError
from gen_models.metrics import inception, torch_reader

_INPUT = flags.DEFINE_string("input", None, "The pytorch-fid checkpoint (.pth).")
_OUTPUT = flags.DEFINE_string(
  "output", None, "The .npz to write (default: the path the FID code reads by default)."
)
flags.mark_flags_as_required(["input"])


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def convert(input_path: str, output_path: str) -> tuple[int, str]:
  """Converts ``input_path`` to ``output_path``; returns ``(number of parameters, sha256)``."""
  input_path = os.path.expanduser(input_path)
  output_path = os.path.expanduser(output_path)
  if not output_path.endswith(".npz"):
    raise UserError(f"--output must end in .npz, got {output_path!r}")
  state_dict = torch_reader.read_torch_state_dict(input_path)
  variables = inception.variables_from_torch(state_dict, input_path)
  directory = os.path.dirname(os.path.abspath(output_path))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {directory}: {e.strerror or e}") from None
  inception.save_variables(output_path, variables)
  inception.load_variables(output_path)  # Read back: the file is what the FID code will see.
  return inception.num_params(), _sha256(input_path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  output = _OUTPUT.value or inception.default_weights_path()
  n, sha = cli.run_user_errors_as_exit(lambda: convert(_INPUT.value, output))
  print(f"wrote {n:,} Inception parameters and the batch-norm statistics to {output}")
  if sha.startswith(inception.TORCH_WEIGHTS_SHA256_PREFIX):
    print(f"input sha256 {sha}: the published {inception.TORCH_WEIGHTS_NAME}")
  else:
    print(
      f"warning: input sha256 {sha} does not start with "
      f"{inception.TORCH_WEIGHTS_SHA256_PREFIX}: not the published {inception.TORCH_WEIGHTS_NAME}; "
      "FID values computed with it are not comparable to published ones"
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
