"""Fixtures of the student tests."""
import pytest

from tests.helpers import questions, student_stages, write_task
from tinythinker.paths import Paths


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from threads, and on a shared, loaded machine idle spinning threads slow training
    tenfold (`pytestmark = pytest.mark.usefixtures("one_thread")` in the modules that train)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def paths(tmp_path, request):
    """A workspace of the small task (tests/helpers.py) with the tokenizer and pretrain stages of the module's
    `PARAMS` run (only the tokenizer where the module sets `PRETRAIN = False`); a module with `WORKSPACE` (a
    function of the Paths) gets what that writes instead."""
    p = Paths(tmp_path)
    if hasattr(request.module, "WORKSPACE"):
        request.module.WORKSPACE(p)
        return p
    write_task(p, questions(12))
    params = request.module.PARAMS
    if getattr(request.module, "PRETRAIN", True):
        student_stages(params, p)
    else:
        from tinythinker.student.stages import tokenizer_stage
        tokenizer_stage(params, p)
    return p
