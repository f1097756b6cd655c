#!/usr/bin/env bash
# The prepared GPU check: the CSQA preset's shape through SFT, one DPO iteration and test, in bf16 and fp32,
# with a local teacher; results in bench/results/gpu-check-<device>.{json,txt} (see bench/gpu_check.py).
#
#   bash bench/gpu_check.sh --fetch [CSQA_DIR]  here, once (needs PyPI): the wheels the GPU image lacks into
#                                               bench/wheels/, the official CSQA files (default
#                                               ../shared/datasets/csqa) into bench/data/csqa/; both git-ignored
#   bash bench/gpu_check.sh                     on the GPU machine (carry bench/wheels and bench/data):
#                                               installs them and the project, then runs the check (< 8 min, H100)
#   bash bench/gpu_check.sh --cpu               the same end to end on the CPU, tiny sizes (a couple of minutes)
#   bash bench/gpu_check.sh --bench ARGS...     on the GPU machine: the same install, then `bench/run.py ARGS`
#                                               (e.g. --student t5-small --only chain,sampling,train)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever else is installed

# What the GPU image (python 3.12, torch, transformers 5.17, accelerate, typer, ...; device/KINDS.md) lacks for
# the stages this check runs: openai (the request stage) and dvclive (training curves) with the modules they
# import when used (traced on a CPU run of this check), the transformers release the project is tested with,
# and the newer floors of some shared dependencies (regex for transformers; typing-extensions, anyio, idna for
# pydantic / httpx2). Versions are the ones installed here. Installed without dependency resolution (no index
# there).
WHEELS="transformers regex typing-extensions anyio idna openai pydantic pydantic-core annotated-types typing-inspection jiter sniffio httpx2 httpcore2
truststore dvclive dvc dvc-data dvc-objects dvc-http dvc-render dvc-studio-client scmrepo dulwich funcy flatten-dict
flufl.lock dpath diskcache orjson pygtrie sqltrie voluptuous zc.lockfile atpublic ruamel.yaml configobj platformdirs
wcwidth"

if [[ "${1:-}" == "--fetch" ]]; then
  src="${2:-../shared/datasets/csqa}"
  rm -rf bench/wheels  # one version of each: two would stop the install there
  mkdir -p bench/data/csqa bench/wheels
  cp "$src/train_rand_split.jsonl" "$src/dev_rand_split.jsonl" bench/data/csqa/
  platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
  for name in $WHEELS; do
    version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    echo "[gpu_check] wheel $name==$version"
    # shellcheck disable=SC2086
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms -d bench/wheels "$name==$version" 2> /dev/null; then
      echo "[gpu_check]   no python 3.12 wheel of $name $version: taking the newest release"
      # shellcheck disable=SC2086
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms -d bench/wheels "$name"
    fi
  done
  du -sh bench/wheels bench/data
  exit 0
fi

if [[ "${1:-}" != "--cpu" ]]; then
  if compgen -G "bench/wheels/*.whl" > /dev/null; then
    echo "[gpu_check] installing $(ls bench/wheels | wc -l) carried wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check bench/wheels/*.whl
  fi
  if ! python3 -m pip show -q tinythinker > /dev/null 2>&1; then
    echo "[gpu_check] installing the project (pip install -e . --no-deps)"
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . ||
      echo "[gpu_check] pip install -e . failed: running from src/ (PYTHONPATH) all the same"
  fi
fi
python3 - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "transformers", "accelerate", "tokenizers", "typer", "yaml", "openai", "dvclive", "tinythinker"):
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
