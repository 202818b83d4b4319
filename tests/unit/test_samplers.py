import itertools

import numpy as np
import pytest

from pipeline.data.samplers import EvalBatchSampler, TrainBatchSampler


def rank_batches(n, batch, world, acc, epoch, seed=0, start=0):
    out = []
    for rank in range(world):
        sampler = TrainBatchSampler(n, batch, world, rank, acc, seed)
        sampler.set_epoch(epoch, start)
        out.append([keys.indices for keys in sampler])
    return out


@pytest.mark.parametrize(("world", "acc"), [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_ranks_are_disjoint_and_cover_all_full_global_batches(world, acc):
    n, batch = 103, 4
    per_rank = rank_batches(n, batch, world, acc, epoch=0)
    seen = [i for batches in per_rank for b in batches for i in b]
    steps = n // (batch * acc * world)
    assert len(seen) == len(set(seen)) == steps * batch * acc * world
    assert all(len(b) == batch for batches in per_rank for b in batches)
    assert all(len(batches) == steps * acc for batches in per_rank)


def test_each_step_uses_the_same_images_whatever_the_world_and_accumulate_split():
    n, batch = 64, 4
    # 1 process x accumulate 2 sees exactly the micro-batches that 2 processes x 1 see.
    one = rank_batches(n, batch, world=1, acc=2, epoch=3)[0]
    two = rank_batches(n, batch, world=2, acc=1, epoch=3)
    for step in range(n // 8):
        assert one[2 * step] == two[0][step]
        assert one[2 * step + 1] == two[1][step]


def test_epochs_are_seeded_permutations():
    a = rank_batches(50, 5, 1, 1, epoch=0)[0]
    assert a == rank_batches(50, 5, 1, 1, epoch=0)[0]  # deterministic
    assert a != rank_batches(50, 5, 1, 1, epoch=1)[0]  # reshuffled per epoch
    assert a != rank_batches(50, 5, 1, 1, epoch=0, seed=1)[0]  # and per seed
    assert sorted(itertools.chain(*a)) == list(range(50))


@pytest.mark.parametrize("start", [0, 1, 5, 7])
def test_resuming_at_step_k_yields_the_rest_of_the_uninterrupted_epoch(start):
    n, batch, world, acc = 90, 3, 2, 2
    full = rank_batches(n, batch, world, acc, epoch=2)
    resumed = rank_batches(n, batch, world, acc, epoch=2, start=start)
    for rank in range(world):
        assert resumed[rank] == full[rank][start * acc :]
    sampler = TrainBatchSampler(n, batch, world, 0, acc)
    sampler.set_epoch(2, start)
    assert len(sampler) == (sampler.steps_per_epoch - start) * acc


def test_a_global_batch_larger_than_the_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the 10 training images"):
        TrainBatchSampler(10, 4, world_size=2, accumulate=2)


@pytest.mark.parametrize(("n", "world", "batch"), [(10, 1, 4), (10, 3, 4), (7, 4, 2), (2, 3, 5)])
def test_eval_sampler_covers_every_sample_exactly_once(n, world, batch):
    seen = [
        i
        for rank in range(world)
        for keys in EvalBatchSampler(n, batch, world, rank)
        for i in keys.indices
    ]
    assert sorted(seen) == list(range(n))
    sizes = [
        sum(len(k.indices) for k in EvalBatchSampler(n, batch, world, r)) for r in range(world)
    ]
    assert max(sizes) - min(sizes) <= 1
    assert np.all([len(k.indices) <= batch for k in EvalBatchSampler(n, batch, world, 0)])
