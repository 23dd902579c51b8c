# Sourced by the device scripts (study.sh, speed.sh) on a lent GPU machine, with
# OUT set: everything after it also goes to OUT/<the script's name>.log, which starts with the
# date and the GPU (nvidia-smi); PYTHON is the interpreter with jax (the image's `python3`); the
# wheels that experiments/device/wheels.sh fetched into .whl/ (if the call carried them) are
# installed to /tmp/site and put first on PYTHONPATH (only packages the image lacks are there);
# jax does not preallocate the GPU's memory. Prints what is missing, if anything, before any
# run starts.
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$(basename "$0" .sh).log") 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null || true
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PYTHON" - <<'PYEOF' || echo "env.sh: an import failed (above); runs needing it will fail"
import importlib
import jax
print("jax", jax.__version__, jax.devices())
missing = []
for name in ("flax", "optax", "orbax.checkpoint", "chex", "ml_collections", "grain",
             "tensorboardX", "sklearn", "matplotlib", "gen_models", "experiments"):
  try:
    importlib.import_module(name)
  except Exception as e:
    missing.append(f"{name} ({type(e).__name__}: {e})")
print("missing:", "; ".join(missing) if missing else "nothing")
PYEOF
