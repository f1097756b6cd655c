"""The curriculum schedule (spec 5.4 with the project's fixes): block order, once-per-epoch coverage, seeds."""
from itertools import groupby

import pytest

from tinythinker.curriculum import CurriculumBatchSampler, schedule, sft_intervals
from tinythinker.protocol import STAGES


def blocks(batches):
    return [(stage, len(list(g))) for stage, g in groupby(s for s, _ in batches)]


def covers_once(batches, sizes):
    for stage, n in sizes.items():
        seen = [i for s, b in batches if s == stage for i in b]
        assert sorted(seen) == list(range(n)), stage


def test_intervals_table():
    assert sft_intervals("recall_analyze_summarize", 100, 5) == {"recall": 100, "analyze": 500, "summarize": 100}
    assert sft_intervals("summarize", 100, 4) == {"summarize": 100}
    assert sft_intervals("recall_summarize", 7, 2) == {"recall": 7, "summarize": 7}
    assert sft_intervals("analyze_summarize", 100, 2) == {"analyze": 200, "summarize": 100}


def test_spec_example_blocks():
    # spec 5.4: 133/665/133 batches with intervals 100/500/100 -> R100 A500 S100 R33 A165 S33
    sizes = {"recall": 133, "analyze": 665, "summarize": 133}
    b = schedule(sizes, {"recall": 100, "analyze": 500, "summarize": 100}, batch_size=1, epoch_seed=0)
    assert blocks(b) == [("recall", 100), ("analyze", 500), ("summarize", 100),
                         ("recall", 33), ("analyze", 165), ("summarize", 33)]


@pytest.mark.parametrize("stage_type", list(STAGES))
def test_every_stage_type_uneven_sizes(stage_type):
    sizes = {"recall": 23, "analyze": 95, "summarize": 41}
    iv = sft_intervals(stage_type, 2, 3)
    bs = 4
    b = schedule(sizes, iv, bs, epoch_seed=1)
    covers_once(b, {s: sizes[s] for s in iv})
    assert {s for s, _ in b} == set(iv)
    assert all(1 <= len(x) <= bs for _, x in b)
    # blocks cycle in chain order, each of its interval, shorter only when the stage runs out
    left = {s: -(-sizes[s] // bs) for s in iv}
    expected = []
    while any(left.values()):
        for s in iv:
            n = min(iv[s], left[s])
            left[s] -= n
            if n and expected and expected[-1][0] == s:  # only stage left: its blocks run together
                expected[-1] = (s, expected[-1][1] + n)
            elif n:
                expected.append((s, n))
    assert blocks(b) == expected


def test_exhausted_stage_skipped_no_carry_over():
    # recall runs out after 1 batch; afterwards the cycle is A(2) S(1) with no oversized blocks (spec 9.11)
    b = schedule({"recall": 1, "analyze": 10, "summarize": 5}, {"recall": 1, "analyze": 2, "summarize": 1}, 1, 3)
    assert blocks(b) == [("recall", 1), ("analyze", 2), ("summarize", 1)] + \
        [("analyze", 2), ("summarize", 1)] * 4
    assert blocks(schedule({"recall": 0, "summarize": 3}, {"recall": 2, "summarize": 2}, 1, 0)) == [("summarize", 3)]


def test_deterministic_per_epoch_seed():
    sizes, iv = {"recall": 30, "analyze": 90, "summarize": 30}, {"recall": 2, "analyze": 6, "summarize": 2}
    assert schedule(sizes, iv, 4, 7) == schedule(sizes, iv, 4, 7)
    assert schedule(sizes, iv, 4, 7) != schedule(sizes, iv, 4, 8)


def test_length_grouping_keeps_coverage_and_groups():
    sizes = {"recall": 200, "summarize": 130}
    lengths = {"recall": [(i * 37) % 101 for i in range(200)], "summarize": [i % 13 for i in range(130)]}
    iv = {"recall": 3, "summarize": 2}
    b = schedule(sizes, iv, 8, 5, lengths=lengths)
    covers_once(b, sizes)
    plain = schedule(sizes, iv, 8, 5)

    def spread(bs):  # mean within-batch length range
        return sum(max(lengths[s][i] for i in x) - min(lengths[s][i] for i in x) for s, x in bs) / len(bs)
    assert spread(b) < spread(plain) / 3
    assert blocks(b) == blocks(plain)


def test_batch_sampler_offsets_and_epochs():
    sizes = {"recall": 5, "analyze": 12, "summarize": 5}
    s = CurriculumBatchSampler(sizes, {"recall": 1, "analyze": 3, "summarize": 1}, 2, seed=42)
    assert len(s) == 3 + 6 + 3
    e0 = list(s)
    assert len(e0) == len(s) and sorted(i for b in e0 for i in b) == list(range(22))
    assert all(i < 5 for i in e0[0]) and all(5 <= i < 17 for i in e0[1])
    assert list(s) == e0  # same epoch, same order (needed to skip batches on resume)
    s.set_epoch(1)
    assert list(s) != e0


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("grouped", [False, True])
def test_processes_split_every_batch_in_lockstep(n, grouped):
    """N samplers (one per process) draw one schedule of batch x N and each takes a disjoint share of every
    step: same stage everywhere, every example once per epoch, about 1/N of the one-process steps."""
    sizes = {"recall": 17, "analyze": 49, "summarize": 9}
    iv, bs = {"recall": 1, "analyze": 3, "summarize": 1}, 4
    lengths = {s: [(i * 7) % 13 for i in range(k)] for s, k in sizes.items()} if grouped else None
    samplers = [CurriculumBatchSampler(sizes, iv, bs, 5, lengths, num_replicas=n, rank=k) for k in range(n)]
    stage_of = {i: s for s, lo in samplers[0].offsets.items() for i in range(lo, lo + sizes[s])}
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        per = [list(s) for s in samplers]
        assert all(len(p) == len(samplers[0]) for p in per)
        seen = []
        for shares in zip(*per):
            assert all(1 <= len(x) <= bs + 1 for x in shares)
            assert len({stage_of[i] for x in shares for i in x}) == 1
            seen += [i for x in shares for i in x]
        assert sorted(seen) == list(range(sum(sizes.values())))
    # 17 rows in batches of 8 (n=2): 8 + 9, the lone last example joins the batch before it
    if n == 2:
        assert [len(b) for s, b in samplers[0].batches() if s == "recall"] in ([8, 9], [9, 8])
    one = CurriculumBatchSampler(sizes, iv, bs, 5, lengths)
    assert len(samplers[0]) <= -(-len(one) // n) + len(sizes)


def test_stage_smaller_than_the_process_count_repeats_rather_than_starves():
    shares = [list(CurriculumBatchSampler({"recall": 2}, {"recall": 1}, 4, 0, num_replicas=3, rank=k))
              for k in range(3)]
    assert [len(s) for s in shares] == [1, 1, 1] and all(len(s[0]) == 1 for s in shares)
    assert {s[0][0] for s in shares} == {0, 1}
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        CurriculumBatchSampler({"recall": 2}, {"recall": 1}, 4, 0, num_replicas=2, rank=2)
