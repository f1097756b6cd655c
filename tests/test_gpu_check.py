"""The GPU check's carried set (bench/gpu_deps.py, bench/gpu_carry.lock.json) against the GPU image's list: fast, no
network. The lock is what `bash bench/gpu_check.sh --fetch` wrote; these tests hold that it is complete and current."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_deps  # noqa: E402


@pytest.fixture(scope="module")
def lock() -> dict:
    return json.loads(gpu_deps.LOCK_FILE.read_text())


@pytest.fixture(scope="module")
def image() -> dict:
    return gpu_deps.read_image()


def test_carried_wheels_and_the_image_meet_every_requirement_of_the_checked_imports(lock, image):
    assert gpu_deps.problems(lock, image) == []


def test_the_lock_follows_the_projects_current_requirements(lock):
    """A dependency changed in pyproject.toml without `--fetch` again would go to the GPU machine unchecked."""
    assert lock["roots"] == gpu_deps.project_roots()
    assert "peft" in {gpu_deps.canon(Requirement(r).name) for r in lock["roots"]}  # the LoRA part


def test_the_set_that_broke_on_the_h200_is_refused(lock, image):
    """Issue 34: transformers 5.25 carried, huggingface-hub left at the image's 1.33.0."""
    broken = copy.deepcopy(lock)
    broken["members"]["huggingface-hub"].update(source="image", version=image["huggingface-hub"], requires=[])
    found = gpu_deps.problems(broken, image)
    assert any(p.startswith("transformers requires huggingface-hub") and "1.33.0" in p for p in found), found
    assert any(p.startswith("<check> requires huggingface_hub") for p in found), found


def test_the_old_hand_kept_list_is_refused(lock, image):
    """What --fetch carried before the closure (by name, only what the image lacks): hub, kernels, typer, datasets,
    peft and more were missing or too old; each shows up as an unmet requirement."""
    old = {"transformers", "regex", "typing-extensions", "anyio", "idna", "openai", "pydantic", "pydantic-core",
           "annotated-types", "typing-inspection", "jiter", "sniffio", "httpx2", "httpcore2", "truststore", "dvclive",
           "dvc", "dvc-data", "dvc-objects", "dvc-http", "dvc-render", "dvc-studio-client", "scmrepo", "dulwich",
           "funcy", "flatten-dict", "flufl-lock", "dpath", "diskcache", "orjson", "pygtrie", "sqltrie", "voluptuous",
           "zc-lockfile", "atpublic", "ruamel-yaml", "configobj", "platformdirs", "wcwidth"}
    then = copy.deepcopy(lock)
    for name, m in then["members"].items():
        if m["source"] == "carry" and name not in old:
            if name in image:
                m.update(source="image", version=image[name], requires=[])
            else:
                m["source"] = "gone"
    then["members"] = {n: m for n, m in then["members"].items() if m["source"] != "gone"}
    found = "\n".join(gpu_deps.problems(then, image))
    for name in ("huggingface_hub<3,>=2.4, the image's huggingface-hub is 1.33.0", "kernels", "typer<1,>=0.29",
                 "datasets", "peft"):
        assert name in found, name


def test_one_version_each_and_the_image_left_alone_where_it_does(lock, image):
    carried = gpu_deps.carried(lock)
    assert len({gpu_deps.canon(p.split("==")[0]) for p in carried}) == len(carried)
    assert "torch" not in {gpu_deps.canon(p.split("==")[0]) for p in carried}  # the image's CUDA build stays
    assert lock["members"]["torch"]["source"] == "image"
    for name in gpu_deps.ASSUMED:  # too large to carry: verified on the machine before the check runs
        assert lock["members"].get(name, {"source": "image"})["source"] == "image"


def test_markers_are_those_of_cpython_312_on_linux():
    assert not gpu_deps.applies(Requirement('tomli>=1.1; python_version < "3.11"'), set())
    assert gpu_deps.applies(Requirement('hf-xet>=1.6; platform_machine == "x86_64"'), set())
    assert not gpu_deps.applies(Requirement('colorama; platform_system == "Windows"'), set())
    assert not gpu_deps.applies(Requirement('pytest; extra == "test"'), set())
    assert gpu_deps.applies(Requirement('pytest; extra == "test"'), {"test"})


def test_a_version_not_read_is_trusted_only_as_far_as_its_floor():
    floors = {"pyyaml": "5.1"}
    assert gpu_deps.satisfied(Requirement("pyyaml"), None, "pyyaml", floors)
    assert gpu_deps.satisfied(Requirement("pyyaml>=5"), None, "pyyaml", floors)
    assert not gpu_deps.satisfied(Requirement("pyyaml>=6"), None, "pyyaml", floors)
    assert not gpu_deps.satisfied(Requirement("pyyaml>=5,<7"), None, "pyyaml", floors)  # an upper bound: unknown
    assert not gpu_deps.satisfied(Requirement("click>=8"), None, "click", floors)  # no floor at all
    assert gpu_deps.satisfied(Requirement("huggingface-hub>=1.31"), "1.33.0", "huggingface-hub")
    assert not gpu_deps.satisfied(Requirement("huggingface-hub>=2.4.0,<3.0"), "1.33.0", "huggingface-hub")


def test_resolve_carries_what_the_image_has_too_old_and_what_refuses_a_carried_package():
    """The resolver on a made-up closure: `app` needs lib>=2 (the image has 1.0: carried) and the image's `tool`
    refuses lib>=2 (carried too); `base` (image, version not read, no version asked) stays."""
    image = {"lib": "1.0", "tool": "0.5", "base": None}
    here = {"app": ("1.0", ["lib>=2", "tool", "base"]), "lib": ("2.1", []), "tool": ("0.6", ["lib"]),
            "base": ("3.0", [])}
    remote = {"tool==0.5": ["lib<2"], "lib==1.0": []}
    lock = gpu_deps.resolve(["app"], image, fetch=lambda pins: {p.split("==")[0]: remote.get(p, []) for p in pins},
                            local=lambda n: here.get(n))
    src = {n: (m["source"], m["version"]) for n, m in lock["members"].items()}
    assert src == {"app": ("carry", "1.0"), "lib": ("carry", "2.1"), "tool": ("carry", "0.6"), "base": ("image", None)}
    assert gpu_deps.problems(lock, image) == []


def test_the_parts_fit_the_checks_budget_of_eight_minutes():
    """Issue 34: the whole check in one device call of at most 8 minutes, the install included (about 40 s)."""
    import gpu_check
    from gpu_parts import PARTS

    total = sum(budget for budget, _ in PARTS.values()) + gpu_check.PIPELINE_BUDGET
    assert total <= 440 <= 8 * 60 - 40, total


def test_the_chain_takes_a_static_cache_only_when_asked():
    from tinythinker.lm.chain import Decoding, _generation_kwargs

    assert "cache_implementation" not in _generation_kwargs(Decoding())
    assert _generation_kwargs(Decoding(cache_implementation="static"))["cache_implementation"] == "static"
