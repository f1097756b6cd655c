#!/usr/bin/env bash
# The prepared GPU check: the CSQA preset's shape through SFT, one DPO iteration and test, in bf16 and fp32,
# with a local teacher; results in bench/results/gpu-check-<device>.{json,txt} (see bench/gpu_check.py).
#
#   bash bench/gpu_check.sh --fetch [CSQA_DIR]  here, once (needs PyPI): the wheels the GPU image lacks into
#                                               bench/wheels/ (bench/gpu_carry.lock.json says which and why), the
#                                               first official CSQA questions (default ../shared/datasets/csqa) into
#                                               bench/data/csqa/; both git-ignored
#   bash bench/gpu_check.sh --emulate           here, after --fetch: the image's versions in a Python 3.12
#                                               environment, the wheels installed as on the GPU machine, then --cpu
#   bash bench/gpu_check.sh                     on the GPU machine (carry bench/wheels and bench/data): installs
#                                               the wheels, checks every requirement, runs the check (< 8 min)
#   bash bench/gpu_check.sh --cpu               the same end to end on the CPU, tiny sizes (a couple of minutes)
#   bash bench/gpu_check.sh --bench ARGS...     on the GPU machine: the same install, then `bench/run.py ARGS`
#                                               (e.g. --student t5-small --only chain,sampling,train)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever else is installed

# What the GPU image lacks is derived, not listed: bench/gpu_deps.py resolves the requirement closure of what the check
# imports against the image's versions (bench/gpu_image_packages.txt) into bench/gpu_carry.lock.json and downloads
# every carried wheel (cp312 manylinux x86_64, one version each). On the GPU machine they go into their own folder
# ahead of the image's site-packages (PYTHONPATH), installed without an index or dependency resolution; --emulate
# does the same here in a Python 3.12 environment holding the image's versions (bench/emulate_gpu_image.py).
SITE="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"

case "${1:-}" in
  --fetch)
    src="${2:-../shared/datasets/csqa}"
    python3 bench/gpu_deps.py fetch
    # the check reads the first 512 train / 128 dev questions (--scale 2 at most: 1,024 / 256)
    mkdir -p bench/data/csqa
    head -n 1024 "$src/train_rand_split.jsonl" > bench/data/csqa/train_rand_split.jsonl
    head -n 256 "$src/dev_rand_split.jsonl" > bench/data/csqa/dev_rand_split.jsonl
    du -sh bench/wheels bench/data
    exit 0 ;;
  --emulate)
    exec python3 bench/emulate_gpu_image.py "${@:2}" ;;
esac

if [[ "${1:-}" != "--cpu" || -n "${GPU_CHECK_INSTALL:-}" ]]; then
  if [[ "${1:-}" != "--cpu" ]]; then  # the image's own versions, before anything is installed (for the next --fetch)
    mkdir -p bench/results
    dev=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1 | tr 'A-Z' 'a-z' |
          sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
    python3 -m pip list --format=freeze --disable-pip-version-check > "bench/results/gpu-image-${dev:-gpu}.txt" 2>&1 || true
  fi
  if ! compgen -G "bench/wheels/*.whl" > /dev/null; then
    echo "gpu_check: no bench/wheels: run \`bash bench/gpu_check.sh --fetch\` where PyPI is reachable and carry bench/wheels"
    exit 1
  fi
  echo "[gpu_check] installing $(ls bench/wheels/*.whl | wc -l) carried wheels into $SITE"
  rm -rf "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" bench/wheels/*.whl
  export PYTHONPATH="$SITE:$PYTHONPATH"
  # every requirement of the closure against what is installed now, all misses at once; the emulation stops on one,
  # the GPU machine goes on (the imports below decide, and each part that fails is recorded while the others run)
  if ! python3 bench/gpu_deps.py verify; then
    [[ "${1:-}" == "--cpu" ]] && exit 1
    echo "[gpu_check] going on despite the unmet requirements above (bench/results/gpu-image-*.txt has the image's list)"
  fi
fi
python3 - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "transformers", "accelerate", "tokenizers", "typer", "yaml", "openai", "dvclive", "trl", "peft",
             "datasets", "tinythinker"):
    try:
        m = importlib.import_module(name)
        print(f"[gpu_check] {name} {getattr(m, '__version__', '')}")
    except Exception as e:  # noqa: BLE001 - any import failure means the check cannot run
        missing.append(f"{name} ({e})")
if missing:
    sys.exit("gpu_check: cannot import " + ", ".join(missing) + ": run `bash bench/gpu_check.sh --fetch` where PyPI "
             "is reachable and carry bench/wheels")
EOF
if [[ "${1:-}" == "--bench" ]]; then
  exec python3 bench/run.py "${@:2}"
fi
exec python3 bench/gpu_check.py "$@"
