#!/usr/bin/env bash
# Run HERE (where pip reaches the package registries), before a call to a lent device: fetches
# into .whl/ the wheels of this package's dependencies that the device machines' image lacks
# (/work/.library/device/KINDS.md lists what it holds: jax, flax, optax, orbax, chex, absl,
# scikit-learn, matplotlib, ... but not these), for its Python 3.12 on x86-64. The device has no
# internet; the call carries .whl (git ignores it through .gitignore, so name it in the device
# tool's `carry`), and experiments/device/env.sh installs them there beside the image's
# packages, never over them. Nothing here touches git.
#
#   bash experiments/device/wheels.sh        # then: carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/../.."
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Pinned to the versions the CPU tests run with (pip show in the README's install).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl \
  ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 tensorboardX==2.6.5 portpicker==1.6.0
du -sh .whl
ls .whl
