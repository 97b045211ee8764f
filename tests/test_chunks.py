"""Cutting a strip for the scale-out: scene cuts first, then long shots into balanced chunks."""
import pytest

from engine_server.scale import chunks


def test_shots_are_the_runs_between_cuts():
    assert chunks.shots(10, []) == [range(0, 10)]
    assert chunks.shots(10, [4, 7]) == [range(0, 4), range(4, 7), range(7, 10)]
    assert chunks.shots(10, [0, 7, 7, 12]) == [range(0, 7), range(7, 10)]  # 0 and beyond the end mean nothing


def test_a_short_strip_is_one_chunk_without_seams():
    plan = chunks.plan(12, [], chunk_frames=100, window=4)
    assert [(c.start, c.stop) for c in plan.chunks] == [(0, 12)]
    assert plan.seams == () and plan.work == 12


def test_cuts_split_without_seams():
    plan = chunks.plan(30, [10, 20], chunk_frames=100, window=4)
    assert [(c.start, c.stop, c.shot) for c in plan.chunks] == [(0, 10, 0), (10, 20, 1), (20, 30, 2)]
    assert plan.seams == () and plan.cuts == (10, 20)
    assert not any(c.seam_before for c in plan.chunks)


def test_a_long_shot_is_split_into_balanced_chunks_with_seams():
    window = 4
    plan = chunks.plan(100, [], chunk_frames=25, window=window)
    lengths = [len(c) for c in plan.chunks]
    assert sum(lengths) == 100 and len(lengths) == 4
    # every chunk but the last also repairs the seam after it: the work per worker is level
    work = [n + window for n in lengths[:-1]] + [lengths[-1]]
    assert max(work) - min(work) <= 1
    assert [s.frame for s in plan.seams] == [c.start for c in plan.chunks[1:]]
    assert all(s.window == window for s in plan.seams)
    # the chunk before each seam runs on past it for the window; the last chunk does not
    assert [c.overlap for c in plan.chunks] == [window] * 3 + [0]
    assert all(c.frames.stop == c.stop + window for c in plan.chunks[:-1])
    assert plan.work == 100 + 3 * window
    # the chunks tile the strip in order
    assert all(a.stop == b.start for a, b in zip(plan.chunks, plan.chunks[1:]))


def test_cuts_and_long_shots_together():
    plan = chunks.plan(60, [10], chunk_frames=20, window=2)
    shots = {}
    for c in plan.chunks:
        shots.setdefault(c.shot, []).append(c)
    assert [(c.start, c.stop) for c in shots[0]] == [(0, 10)]          # the short shot stays whole
    assert len(shots[1]) == 3 and shots[1][0].start == 10 and shots[1][-1].stop == 60
    assert not shots[1][0].seam_before and all(c.seam_before for c in shots[1][1:])
    assert all(s.frame > 10 for s in plan.seams)  # no seam at the cut
    assert shots[0][0].overlap == 0               # nor an overlap across it


def test_chunks_too_short_for_their_seams_are_merged():
    # 10 frames in chunks of 2 with a 4-frame window: a seam would cost more than the chunk saves
    plan = chunks.plan(10, [], chunk_frames=2, window=4)
    assert all(len(c) >= 2 * 4 + 1 for c in plan.chunks[:-1])
    assert sum(len(c) for c in plan.chunks) == 10


def test_default_chunk_length_gives_one_chunk_per_worker():
    frames = chunks.default_chunk_frames(48, workers=2, window=8)
    plan = chunks.plan(48, [], frames, window=8)
    assert len(plan.chunks) == 2
    assert len(plan.chunks[0]) + 8 == len(plan.chunks[1])  # the first worker also repairs the seam


def test_a_saved_plan_comes_back_the_same():
    plan = chunks.plan(60, [10], chunk_frames=20, window=2)
    assert chunks.Plan.from_dict(plan.to_dict()) == plan


def test_bad_chunk_length():
    with pytest.raises(ValueError):
        chunks.plan(10, [], 0, 4)
