"""The GPU check's install and CPU path in an emulation of the GPU image (run it as `bash bench/gpu_check.sh --emulate`).

After `bash bench/gpu_check.sh --fetch`: a Python 3.12 virtual environment holding the image's versions of every
package of the check's closure the image has (torch at the image's version, 2.11.0: PyPI's build of it is the
CUDA one the image has, with its CUDA libraries, and runs on a CPU; transformers, huggingface-hub, accelerate,
tokenizers, typer, numpy, safetensors at the image's versions, the carried wheels shadowing some of them as on the
machine; those the image lists without a version and the lock leaves to it, at the version installed here), then `bash bench/gpu_check.sh --cpu` with GPU_CHECK_INSTALL=1: the carried wheels
installed exactly as on the GPU machine (`pip install --no-index --no-deps --target`, PYTHONPATH ahead of the
image's site-packages), the closure's requirements verified, the imports checked, and the check's CPU path run end
to end. The environment (about 5 GB, most of it torch's CUDA libraries) is kept in ~/.cache/tinythinker/ and
rebuilt when the image's list or the lock changes what it must hold (a first build downloads about 3 GB: minutes).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gpu_deps

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinythinker"


def python312() -> str:
    """A CPython 3.12 (the image's minor version): python3.12 on PATH, or pyenv's."""
    for cand in (*sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")), shutil.which("python3.12")):
        run = subprocess.run([str(cand), "-c", "import sys; assert sys.version_info[:2] == (3, 12); print(sys.executable)"],
                             capture_output=True, text=True) if cand else None
        if run and run.returncode == 0:
            return run.stdout.strip()
    sys.exit("emulate_gpu_image: no Python 3.12 here (the image's is 3.12.3)")


def image_pins(lock: dict, image: dict) -> tuple[str, list[str]]:
    """(torch's pin, the other pins): every member the lock leaves to the image, at the image's version, or at the
    version installed here where the image's list gives none; and every carried member the image has at a known
    version, at that version (huggingface-hub 1.33.0, transformers 5.17.0, ...: on the machine the carried ones
    shadow them through PYTHONPATH, and so they do here)."""
    torch, pins = None, []
    for name, m in lock["members"].items():
        if m["source"] != "image" and not image.get(name):
            continue
        version = image.get(name) or md.version(name)
        if name == "torch":
            torch = f"torch=={version.split('+')[0]}"
        else:
            pins.append(f"{name}=={version}")
    return torch or "torch", sorted(pins)


def build(env: Path, python: str, torch: str, pins: list[str]) -> None:
    stamp = env / "image-pins.txt"
    want = "\n".join([python, torch, *pins]) + "\n"
    if stamp.exists() and stamp.read_text() == want:
        print(f"[emulate] the image's environment is ready: {env}", flush=True)
        return
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    have = stamp.read_text().splitlines() if stamp.exists() else []
    if have[:2] == [python, torch] and set(have[2:]) <= set(pins):  # only more packages: add them, keep torch's
        more = sorted(set(pins) - set(have[2:]))
        print(f"[emulate] adding {' '.join(more)} to the image's environment in {env}", flush=True)
        subprocess.run(pip + ["--no-deps", *more], check=True, env=gpu_deps.PIP_ENV)
        stamp.write_text(want)
        return
    shutil.rmtree(env, ignore_errors=True)
    print(f"[emulate] building the image's environment in {env}: {torch} (with its CUDA libraries), then "
          f"{len(pins)} packages at the image's versions, without dependencies", flush=True)
    subprocess.run([python, "-m", "venv", str(env)], check=True)
    subprocess.run(pip + [torch], check=True, env=gpu_deps.PIP_ENV)
    subprocess.run(pip + ["--no-deps", *pins], check=True, env=gpu_deps.PIP_ENV)
    stamp.write_text(want)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", type=Path, default=CACHE / "gpu-image-py312", help="the emulated image's environment")
    ap.add_argument("--rebuild", action="store_true", help="build the environment anew")
    a, rest = ap.parse_known_args()
    if not list(gpu_deps.WHEELS.glob("*.whl")):
        sys.exit("emulate_gpu_image: no bench/wheels: run `bash bench/gpu_check.sh --fetch` first")
    lock = json.loads(gpu_deps.LOCK_FILE.read_text())
    torch, pins = image_pins(lock, gpu_deps.read_image())
    if a.rebuild:
        shutil.rmtree(a.env, ignore_errors=True)
    t0 = time.perf_counter()
    build(a.env, python312(), torch, pins)
    t1 = time.perf_counter()
    site = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-check-emulated-site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{a.env / 'bin'}:{env['PATH']}", GPU_CHECK_INSTALL="1", GPU_CHECK_SITE=str(site),
               PYENV_VERSION="system", PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PIP_CONSTRAINT="")
    run = subprocess.run(["bash", str(gpu_deps.BENCH / "gpu_check.sh"), "--cpu", *rest], env=env)
    print(f"[emulate] environment {t1 - t0:.0f} s, the check through the carried wheels {time.perf_counter() - t1:.0f} s: "
          + ("passed" if run.returncode == 0 else f"FAILED (exit {run.returncode})"), flush=True)
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
