"""The curriculum schedule (spec 5.4 with the project's fixes): block order, once-per-epoch coverage, seeds."""
from itertools import groupby

import pytest

from tinythinker.protocol import STAGES
from tinythinker.lm.curriculum import CurriculumBatchSampler, schedule, sft_intervals


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


# --- gradient accumulation: intervals count optimizer steps ------------------------------------------------------
def steps(sampler):
    """The sampler's micro-batches grouped into optimizer steps (as the Trainer groups them), by stage."""
    micro = list(sampler)
    k = sampler.accumulation
    assert len(micro) == len(sampler) and len(micro) % k == 0
    out = []
    for j in range(0, len(micro), k):
        group = micro[j:j + k]
        assert all(group), "an empty micro-batch"
        stage = {next(s for s, off in sorted(sampler.offsets.items(), key=lambda x: -x[1]) if i >= off)
                 for b in group for i in b}
        assert len(stage) == 1, "an optimizer step mixes stages"
        out.append((stage.pop(), sorted(i for b in group for i in b)))
    return out


@pytest.mark.parametrize("lengths", [False, True])
def test_accumulated_steps_are_the_large_batches(lengths):
    """batch 4 x 4 micro-batches = the same optimizer steps, blocks and examples as batch 16 without accumulation."""
    sizes = {"recall": 64, "analyze": 192, "summarize": 64}
    iv = sft_intervals("recall_analyze_summarize", 2, 3)
    lens = {s: [(i * 7) % 23 for i in range(n)] for s, n in sizes.items()} if lengths else None
    acc = CurriculumBatchSampler(sizes, iv, 4, seed=1, lengths=lens, accumulation=4)
    big = CurriculumBatchSampler(sizes, iv, 16, seed=1, lengths=lens)
    assert len(acc) == 4 * len(big) == 4 * 20
    assert steps(acc) == [(s, sorted(b)) for s, b in steps(big)]
    assert blocks(steps(acc)) == blocks(steps(big)) == [("recall", 2), ("analyze", 6), ("summarize", 2)] * 2
    assert all(len(b) == 4 for b in acc)  # micro-batches of batch_size


def test_accumulation_tail_joins_the_last_step_and_every_example_stays():
    sizes = {"recall": 18, "summarize": 9}  # recall: 16 + 2 (< 4 micro-batches) -> one step of 18; summarize 9
    s = CurriculumBatchSampler(sizes, {"recall": 1, "summarize": 1}, 4, seed=0, accumulation=4)
    got = steps(s)
    assert [(stage, len(idx)) for stage, idx in got] == [("recall", 18), ("summarize", 9)]
    assert sorted(i for _, idx in got for i in idx) == list(range(27))
    assert sorted(len(b) for b in s) == [2, 2, 2, 3] + [4, 4, 5, 5]  # near-equal micro-batches, none empty
    for n in range(4, 40):  # __len__ agrees with the batches for every size
        t = CurriculumBatchSampler({"recall": n}, {"recall": 2}, 3, seed=0, accumulation=4)
        assert len(list(t)) == len(t)


def test_stage_smaller_than_accumulation_is_refused():
    from tinythinker.io import DataError

    with pytest.raises(DataError, match="summarize: 3 examples cannot fill 4 micro-batches"):
        CurriculumBatchSampler({"recall": 40, "summarize": 3}, {"recall": 1, "summarize": 1}, 2, 0, accumulation=4)


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


@pytest.mark.parametrize("grouped", [False, True])
def test_accumulation_under_processes_shares_one_large_batch(grouped):
    """k = 2 micro-batches x N = 2 processes: every step is one batch of batch x k x N of one stage, each
    process takes a disjoint share of it in k non-empty micro-batches; the blocks count optimizer steps as
    without accumulation or processes; a stage's tail under k x N joins the batch before it."""
    # steps of 16: recall 35 = 16 + 16 + 3 (< 4) -> 16 + 19; analyze 98 -> 5 x 16 + 18; summarize 19 -> 19
    sizes = {"recall": 35, "analyze": 98, "summarize": 19}
    iv, bs, k, n = {"recall": 1, "analyze": 3, "summarize": 1}, 4, 2, 2
    lengths = {s: [(i * 7) % 13 for i in range(m)] for s, m in sizes.items()} if grouped else None
    samplers = [CurriculumBatchSampler(sizes, iv, bs, 5, lengths, accumulation=k, num_replicas=n, rank=r)
                for r in range(n)]
    schedule_ = samplers[0].batches()
    assert all(s.batches() == schedule_ for s in samplers)  # one schedule everywhere
    assert sorted(len(b) for s, b in schedule_ if s == "recall") == [16, 19]
    assert sorted(len(b) for s, b in schedule_ if s != "recall") == [16] * 5 + [18, 19]
    assert [s for s, _ in schedule_] == ["recall"] + ["analyze"] * 3 + ["summarize", "recall"] + ["analyze"] * 3
    per = [list(s) for s in samplers]
    assert all(len(p) == len(s) == k * len(schedule_) for p, s in zip(per, samplers))
    offsets = samplers[0].offsets
    for step, (stage, idx) in enumerate(schedule_):
        micro = [p[step * k:(step + 1) * k] for p in per]  # process r's k micro-batches of this step
        assert all(len(m) == k and all(m) for m in micro)
        ids = [i for m in micro for b in m for i in b]
        assert sorted(ids) == sorted(offsets[stage] + i for i in idx)  # the step's batch, each example once
        assert all(len(b) in (bs, bs + 1) for m in micro for b in m)  # near-equal micro-batches
    assert sorted(i for p in per for b in p for i in b) == list(range(sum(sizes.values())))


def test_stage_smaller_than_accumulation_times_processes_repeats_rather_than_starves():
    """5 examples, k = 2, N = 3: six micro-batches per step, each non-empty; the one left without its own
    example repeats one of the step's."""
    shares = [list(CurriculumBatchSampler({"recall": 5}, {"recall": 1}, 4, 0, accumulation=2, num_replicas=3,
                                          rank=r)) for r in range(3)]
    assert [len(s) for s in shares] == [2, 2, 2] and all(b for s in shares for b in s)
    ids = [i for s in shares for b in s for i in b]
    assert set(ids) == set(range(5)) and len(ids) == 6
