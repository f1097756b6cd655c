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
