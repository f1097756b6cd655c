"""dvc.yaml and params.yaml agree: every knob is a param of a stage that reads and validates it, so a change to it
through `dvc exp run -S` reruns that stage (and a bad value fails there), unless it is listed below with why not."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Keys deliberately a param of no stage, with the reason.
NOT_STAGE_PARAMS = {
    "launcher": "how the model stages are started (python or accelerate launch): part of their cmd, which DVC hashes",
}


def leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        # dpo.iterations is a keyed mapping that makes stages (foreach), read whole by the stages that use it
        if isinstance(v, dict) and v and key != "dpo.iterations":
            out += leaves(v, key + ".")
        else:
            out.append(key)
    return out


def stage_params() -> set[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = set()
    for body in stages.values():
        for p in (body.get("do") or body).get("params", []):
            found |= set(p) if isinstance(p, dict) else {p}
    return found


def test_every_key_of_params_yaml_is_a_param_of_a_stage_or_listed_with_a_reason():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    covered = stage_params()
    orphans = [k for k in leaves(params)
               if k not in NOT_STAGE_PARAMS and not any(k == c or k.startswith(c + ".") for c in covered)]
    assert orphans == []


def test_the_listed_exceptions_are_real_keys():
    keys = leaves(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(NOT_STAGE_PARAMS) <= set(keys)


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def expanded_stages(stages: dict, params: dict) -> dict[str, dict]:
    """dvc.yaml's stages as dvc.lock names them: a `foreach` over dpo.iterations becomes `name@key` per iteration,
    with ${key}, ${item.init} and ${launcher} filled in."""
    out = {}
    for name, body in stages.items():
        items = {None: None} if "foreach" not in body else _lookup(params, body["foreach"][2:-1])
        for key, item in items.items():
            fill = {"${launcher}": params["launcher"], "${key}": key or "", "${item.init}": (item or {}).get("init", "")}

            def sub(text: str) -> str:
                for k, v in fill.items():
                    text = text.replace(k, v)
                return text

            b = body.get("do", body)
            out[name if key is None else f"{name}@{key}"] = {
                "cmd": sub(b["cmd"]), "deps": sorted(sub(d) for d in b.get("deps", [])),
                "params": sorted(k for p in b.get("params", []) for k in (p if isinstance(p, dict) else [p]))}
    return out


def test_the_committed_dvc_lock_is_a_run_of_this_dvc_yaml_and_params_yaml():
    """The reference run is committed as DVC records it: the lock names the stages, commands and dependency paths
    of dvc.yaml, and the values of params.yaml (a lock of another layout or other params is not this run)."""
    from tinythinker.io import read_yaml  # as DVC reads both files (YAML 1.2: 2e-05 is a number)

    params = read_yaml(REPO / "params.yaml")
    want = expanded_stages(read_yaml(REPO / "dvc.yaml")["stages"], params)
    lock = read_yaml(REPO / "dvc.lock")["stages"]
    assert sorted(lock) == sorted(want)
    for name, entry in lock.items():
        assert entry["cmd"] == want[name]["cmd"], name
        assert sorted(d["path"] for d in entry.get("deps", [])) == want[name]["deps"], name
        recorded = entry.get("params", {}).get("params.yaml", {})
        assert sorted(recorded) == want[name]["params"], name
        for key, value in recorded.items():
            assert value == _lookup(params, key), f"{name}: {key}"
