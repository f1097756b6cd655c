"""What the GPU check carries to the GPU image: the requirement closure of what it imports, against the image's versions.

    python3 bench/gpu_deps.py fetch      resolve, then download (what `bash bench/gpu_check.sh --fetch` runs)
    python3 bench/gpu_deps.py resolve    write bench/gpu_carry.lock.json (needs PyPI for the image's own metadata)
    python3 bench/gpu_deps.py download   the lock's carried wheels into bench/wheels/ (cp312 manylinux x86_64)
    python3 bench/gpu_deps.py check      the lock against the image's list: every requirement met (no network)
    python3 bench/gpu_deps.py verify     the lock against this environment (on the GPU machine, after the install)

Roots: the project's dependencies (pyproject.toml: `tinythinker` is what the check imports) and the `lora` extra
(the LoRA part of the check), less ROOTS_NOT_IMPORTED. The closure follows every `Requires-Dist` whose marker holds
for CPython 3.12 on Linux x86_64 (with the extras a requirement asks for). Each member is either left to the image
(bench/gpu_image_packages.txt) where the image's version meets every requirement on it in the closure, or carried at
the version installed here (one version each): missing from the image, too old, too new, or listed there without a
version while a requirement names one. A member the image provides is followed with the requirements of the image's
version (PyPI's metadata for it, read by `pip install --dry-run --report`, never installed), so a carried package
that an image package refuses (an upper bound) makes that package carried too. Exceptions, each with its reason:
REQUIREMENTS_NOT_FOLLOWED (the image's own CUDA stack) and ASSUMED (listed in the image without a version, too
large to carry; the device run checks them before anything else: gpu_check.sh's import check).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
IMAGE_FILE = BENCH / "gpu_image_packages.txt"
LOCK_FILE = BENCH / "gpu_carry.lock.json"
WHEELS = BENCH / "wheels"

# CPython 3.12 on Linux x86_64, as on the image (/opt/torch/.venv/bin/python3 is 3.12.3)
ENV = {"implementation_name": "cpython", "implementation_version": "3.12.3", "os_name": "posix",
       "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
       "platform_system": "Linux", "platform_version": "", "python_full_version": "3.12.3", "python_version": "3.12",
       "sys_platform": "linux"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]
# PyPI alone: no local wheel folders, indexes or constraints of this machine's pip configuration
PIP_ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
# Declared by the project, never imported by the check (results/report.py alone draws the report's charts).
ROOTS_NOT_IMPORTED = {"vl-convert-python": "results/report.py alone imports it (chart rendering)"}
EXTRAS = ("lora",)  # peft: the check's LoRA part
# The image's torch is a CUDA build installed with its CUDA libraries and triton: its requirements are the image's.
REQUIREMENTS_NOT_FOLLOWED = {"torch": "the image's CUDA build, installed with its own CUDA libraries and triton"}
# Listed in the image without a version and too large to carry within the 64 MiB a device call takes; the device
# run checks each against the closure's requirements before it runs (gpu_check.sh) and records the image's versions.
ASSUMED = {"pyarrow": "a 45 MB wheel; datasets (TRL's trainers) needs >= 24"}
# The image's packages of known version whose requirements give floors to those the image lists without a version.
EVIDENCE = ("torch", "torchvision", "torchaudio", "torchmetrics", "pytorch-lightning", "transformers", "huggingface-hub",
            "accelerate", "tokenizers", "sentence-transformers", "typer", "botorch", "gpytorch", "numpyro",
            "onnxscript", "onnx", "jaxtyping", "torch-geometric")


def canon(name: str) -> str:
    return canonicalize_name(name)


def _image_lines(path: Path):
    for line in path.read_text().splitlines():
        text, _, comment = line.partition("#")
        if text.strip():
            yield text.strip(), comment.strip()


def read_image(path: Path = IMAGE_FILE) -> dict[str, str | None]:
    """{canonical name: version, or None where the image's list gives no version}."""
    image: dict[str, str | None] = {}
    for text, _ in _image_lines(path):
        name, _, version = text.partition("==")
        image[canon(name.split(">=")[0])] = version.strip() or None
    return image


def stated_floors(path: Path = IMAGE_FILE) -> dict[str, dict]:
    """The file's `name>=version  # reason` lines: a package listed without a version and a floor reasoned out."""
    out = {}
    for text, comment in _image_lines(path):
        if ">=" in text:
            name, floor = text.split(">=")
            out[canon(name)] = {"floor": floor.strip(), "because": comment}
    return out


def applies(req: Requirement, extras: set[str]) -> bool:
    """The requirement's marker holds on the image for one of the requested extras (or for none)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**ENV, "extra": e}) for e in ({""} | set(extras)))


def project_roots(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [r for r in reqs if canon(Requirement(r).name) not in ROOTS_NOT_IMPORTED]


def satisfied(req: Requirement, version: str | None, name: str, floors: dict[str, str] | None = None) -> bool:
    """`version` meets `req`. A version None is the image's, not read: it meets a requirement that names no version,
    or one of lower bounds alone that its floor (the least version the image's own packages require) meets; ASSUMED
    names pass (checked on the device)."""
    if version is not None:
        return req.specifier.contains(Version(version), prereleases=True)
    if name in ASSUMED or not str(req.specifier):
        return True
    floor = (floors or {}).get(name)
    if floor is None:
        return False
    f = Version(floor)
    for spec in req.specifier:
        v = spec.version.removesuffix(".*")
        ok = {">=": lambda: Version(v) <= f, ">": lambda: Version(v) < f,
              "!=": lambda: Version(v) < f and not spec.version.endswith(".*")}.get(spec.operator, lambda: False)()
        if not ok:
            return False
    return True


def floors_of(evidence: dict[str, list[str]], image: dict[str, str | None]) -> dict[str, dict]:
    """{name listed without a version: {floor, because}}: the highest lower bound on it among the requirements of the
    image's packages of known version (pip installed them together, so the image's version meets each)."""
    out: dict[str, dict] = {}
    for pin, reqs in sorted(evidence.items()):
        for r in reqs:
            req = Requirement(r)
            name = canon(req.name)
            if image.get(name, "?") is not None or not applies(req, set()):
                continue
            for spec in req.specifier:
                if spec.operator in (">=", "==", "~=", "===") and not spec.version.endswith(".*"):
                    v = spec.version
                    if name not in out or Version(v) > Version(out[name]["floor"]):
                        out[name] = {"floor": v, "because": f"{pin} requires {req.name}{req.specifier}"}
    return out


# --- the closure -----------------------------------------------------------------------------------------------
def local_metadata(name: str) -> tuple[str, list[str]] | None:
    import importlib.metadata as md

    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return d.version, list(d.requires or [])


def pypi_metadata(pins: list[str]) -> dict[str, list[str]]:
    """{canonical name: Requires-Dist} of each `name==version` as PyPI gives it for cp312 manylinux (nothing
    installed: `pip install --dry-run --report`; one call for all)."""
    if not pins:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps", "--ignore-installed",
               "--ignore-requires-python",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--target",
               str(Path(tmp) / "t"), "--report", str(report), *sum((["--platform", p] for p in PLATFORMS), []), *pins]
        subprocess.run(cmd, check=True, env=PIP_ENV)
        return {canon(i["metadata"]["name"]): i["metadata"].get("requires_dist") or []
                for i in json.loads(report.read_text())["install"]}


def resolve(roots: list[str], image: dict[str, str | None], fetch=pypi_metadata, local=local_metadata) -> dict:
    """The closure and, per member, image or carry (see the module doc). Returns the lock's content."""
    carry: set[str] = set()
    pins = [f"{n}=={image[n]}" for n in EVIDENCE if image.get(n)]
    got = fetch(pins)
    remote = {p: got.get(canon(p.split("==")[0]), []) for p in pins}
    floors = floors_of({p: remote[p] for p in pins}, image)
    for name, f in stated_floors().items():
        if name not in floors or Version(f["floor"]) > Version(floors[name]["floor"]):
            floors[name] = f
    floor = {n: f["floor"] for n, f in floors.items()}
    while True:
        members: dict[str, dict] = {}
        edges: list[tuple[str, Requirement]] = []
        todo = [("<check>", Requirement(r)) for r in roots]
        need_remote = []
        while todo:
            by, req = todo.pop()
            name = canon(req.name)
            if not applies(req, members.get(by, {}).get("extras", set()) if by != "<check>" else set()):
                continue
            edges.append((by, req))
            new_extras = set(req.extras)
            if name in members:
                if new_extras <= members[name]["extras"]:
                    continue
                members[name]["extras"] |= new_extras
            mine = local(name)
            source = "carry" if name in carry or name not in image else "image"
            if source == "carry":
                if mine is None:
                    raise SystemExit(f"gpu_deps: {name} must be carried but is not installed here "
                                     f"(required by {by}: {req}); install it here first")
                version, requires = mine
            elif image[name] is None:  # present, version not read: its requirements as of the version here, if any
                version, requires = None, (mine[1] if mine else [])
            elif mine and mine[0] == image[name]:
                version, requires = mine
            else:
                version = image[name]
                key = f"{name}=={version}"
                if name in REQUIREMENTS_NOT_FOLLOWED:
                    requires = []
                elif key not in remote:
                    need_remote.append(key)
                    requires = []
                else:
                    requires = remote[key]
            if name in REQUIREMENTS_NOT_FOLLOWED:
                requires = []
            m = members.setdefault(name, {"version": version, "source": source, "extras": set(), "requires": requires})
            m["extras"] |= new_extras
            for r in requires:
                todo.append((name, Requirement(r)))
        if need_remote:
            got = fetch(sorted(set(need_remote)))
            for key in set(need_remote):
                remote[key] = got.get(canon(key.split("==")[0]), [])
            continue
        new = set()
        for by, req in edges:
            name = canon(req.name)
            m = members[name]
            if m["source"] == "image" and not satisfied(req, m["version"], name, floor):
                new.add(name)  # the image's version does not do: carry the version here
            elif m["source"] == "carry" and by in members and members[by]["source"] == "image" \
                    and not satisfied(req, m["version"], name):
                new.add(by)  # an image package refuses a carried one (an upper bound): carry it too
        if not new - carry:
            break
        carry |= new
    return {"python": ENV["python_full_version"], "platforms": PLATFORMS, "roots": roots, "image_floors": floors,
            "members": {n: {**m, "extras": sorted(m["extras"])} for n, m in sorted(members.items())}}


# --- checking a lock -------------------------------------------------------------------------------------------
def problems(lock: dict, image: dict[str, str | None]) -> list[str]:
    """Every requirement in the lock's closure that the carried set plus the image does not meet (empty: all met).
    A member left to the image must be there at the version the lock followed."""
    members = lock["members"]
    floor = {n: f["floor"] for n, f in lock.get("image_floors", {}).items()}
    out = []
    for name, m in members.items():
        if m["source"] == "image":
            if name not in image:
                out.append(f"{name} is left to the image, which lacks it")
            elif image[name] != m["version"]:
                out.append(f"{name} {m['version']} is left to the image, which has {image[name]}")
    for by, reqs, extras in [("<check>", lock["roots"], set())] + \
            [(n, m["requires"], set(m["extras"])) for n, m in members.items()]:
        for r in reqs:
            req = Requirement(r)
            if not applies(req, extras):
                continue
            name = canon(req.name)
            if name not in members:
                out.append(f"{by} requires {req}: neither carried nor in the image"
                           if name not in image else f"{by} requires {req}: not followed in the lock")
                continue
            if not satisfied(req, members[name]["version"], name, floor):
                have = members[name]["version"] or "a version not read"
                where = "carried" if members[name]["source"] == "carry" else "the image's"
                out.append(f"{by} requires {req}, {where} {name} is {have}")
            missing_extras = set(req.extras) - set(members[name]["extras"])
            if missing_extras:
                out.append(f"{by} requires {req}: extras {sorted(missing_extras)} not followed")
    return out


def carried(lock: dict) -> list[str]:
    return [f"{n}=={m['version']}" for n, m in lock["members"].items() if m["source"] == "carry"]


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """(Version, Requires-Dist) from a wheel's METADATA."""
    import zipfile
    from email.parser import HeaderParser

    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = HeaderParser().parsestr(z.read(name).decode())
    return meta["Version"], meta.get_all("Requires-Dist") or []


def requirements_on(lock: dict, name: str) -> str:
    """Every requirement on `name` in the lock's closure, as one specifier."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet()
    for by, reqs, extras in [("<check>", lock["roots"], set())] + \
            [(n, m["requires"], set(m["extras"])) for n, m in lock["members"].items()]:
        for r in reqs:
            req = Requirement(r)
            if canon(req.name) == name and applies(req, extras):
                spec &= req.specifier
    return str(spec)


def download(lock: dict, dest: Path = WHEELS) -> list[str]:
    """The carried wheels, one version each, into a fresh `dest`. A version here without a cp312 wheel is replaced
    by the newest release that meets every requirement on it, else built from its source (pure Python only); the
    lock is updated to what was taken. Returns what changed."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
            "3.12", "--implementation", "cp", *sum((["--platform", p] for p in PLATFORMS), []), "-d", str(dest)]
    pins = carried(lock)
    changed = []
    missing, todo = [], list(pins)
    while todo:  # pip names one requirement it cannot meet per try: set it aside and try the rest again
        run = subprocess.run(base + todo, env=PIP_ENV, capture_output=True, text=True)
        if run.returncode == 0:
            break
        bad = [p for p in todo if f"found for {p}" in run.stderr or f"requirement {p} " in run.stderr]
        if not bad:
            raise SystemExit(f"gpu_deps: pip download failed:\n{run.stderr[-2000:]}")
        missing += bad
        todo = [p for p in todo if p not in bad]
    if missing:
        for pin in missing:
            name = canon(pin.split("==")[0])
            newest = f"{name}{requirements_on(lock, name)}"
            before = set(dest.glob("*.whl"))
            if subprocess.run(base + [newest], env=PIP_ENV, capture_output=True).returncode != 0:
                build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), pin]
                if subprocess.run(build, env=PIP_ENV, capture_output=True).returncode != 0:
                    raise SystemExit(f"gpu_deps: no cp312 manylinux x86_64 wheel of {newest}, nor one built from {pin}")
            (wheel,) = set(dest.glob("*.whl")) - before
            if not wheel.name.endswith("-none-any.whl") and "manylinux" not in wheel.name:
                raise SystemExit(f"gpu_deps: {wheel.name}, built here, would not install on the image")
            version, requires = wheel_metadata(wheel)
            if version != lock["members"][name]["version"]:
                changed.append(f"{pin} -> {version} (no cp312 wheel of the version here)")
            else:
                changed.append(f"{pin}: wheel built here from its source ({wheel.name})")
            lock["members"][name].update(version=version, requires=requires)
    names = [canon(w.name.split("-")[0]) for w in dest.glob("*.whl")]
    if sorted(names) != sorted(canon(p.split("==")[0]) for p in pins):
        raise SystemExit(f"gpu_deps: the wheels in {dest} are not the lock's carried set, one each")
    return changed


def verify(lock: dict) -> list[str]:
    """The lock's closure against what this Python imports (the image plus the carried wheels on PYTHONPATH): every
    requirement met by the version installed. Run where the check runs, before it (no network, a second)."""
    import importlib.metadata as md

    out = []
    for by, reqs, extras in [("<check>", lock["roots"], set())] + \
            [(n, m["requires"], set(m["extras"])) for n, m in lock["members"].items()]:
        for r in reqs:
            req = Requirement(r)
            if not applies(req, extras):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                out.append(f"{by} requires {req}: not installed")
                continue
            if not req.specifier.contains(Version(have), prereleases=True):
                out.append(f"{by} requires {req}: {req.name} {have} is installed")
    return sorted(set(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fetch", "resolve", "download", "check", "verify"])
    a = ap.parse_args()
    image = read_image()
    if a.what in ("fetch", "resolve"):
        lock = resolve(project_roots(), image)
        LOCK_FILE.write_text(json.dumps(lock, indent=1) + "\n")
        print(f"[gpu_deps] closure of {len(lock['members'])} distributions, {len(carried(lock))} carried: "
              + " ".join(carried(lock)))
    lock = json.loads(LOCK_FILE.read_text())
    if a.what in ("fetch", "download"):
        for line in download(lock):
            print(f"[gpu_deps] {line}")
        LOCK_FILE.write_text(json.dumps(lock, indent=1) + "\n")
        size = sum(w.stat().st_size for w in WHEELS.glob("*.whl"))
        print(f"[gpu_deps] {len(carried(lock))} wheels, {size / 2**20:.1f} MiB in {WHEELS}")
    if a.what == "verify":
        bad = verify(lock)
        for p in bad:
            print(f"[gpu_deps] unmet here: {p}")
        if bad:
            sys.exit(f"gpu_deps: {len(bad)} requirements of the check's closure unmet in this environment: add the "
                     f"versions read here to {IMAGE_FILE.name} and run `bash bench/gpu_check.sh --fetch` again")
        print(f"[gpu_deps] every requirement of the closure ({len(lock['members'])} distributions) is met here")
        return
    bad = problems(lock, image)
    for p in bad:
        print(f"[gpu_deps] unmet: {p}")
    if bad:
        sys.exit(1)
    print(f"[gpu_deps] every requirement of the closure ({len(lock['members'])} distributions) is met by "
          f"{len(carried(lock))} carried wheels and the image")


if __name__ == "__main__":
    main()
