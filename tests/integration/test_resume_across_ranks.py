"""The real trainer in two gloo processes, resumed mid-epoch as a cluster job would be: rank 0
alone reads the checkpoint and sends it, every rank resumes from the file rank 0 chose (even
where another rank sees the folder differently), and no collective gets a tensor that a GPU
run would hold in host memory."""

import json
import shutil

import pytest
import torch

from pipeline.paths import RunPaths
from training_runs import experiment, final_state, run_processes, small_images

pytestmark = pytest.mark.slow
WORLD = 2


@pytest.fixture(scope="module")
def data_config(module_tmp):
    """48 train images in 3 classes: 3 steps of 2 x 8 an epoch."""
    return small_images(
        module_tmp("resume"),
        16,
        train={
            "epochs": 2,
            "batch_per_worker": 8,
            "checkpoint_every_min": 1e-9,  # a checkpoint after every step
            "keep_checkpoints": 100,
        },
        # Two nodes of one task: the nodes' system metrics are gathered too.
        launcher={"nodes": 2, "tasks_per_node": 1},
        tracking={"system_metrics_s": 0.2},
    )


@pytest.fixture(scope="module")
def uninterrupted(data_config):
    config = experiment(data_config, "whole")
    run_processes(config, WORLD)
    return config


@pytest.fixture(scope="module")
def resumed(data_config, uninterrupted, module_tmp):
    """Resumed from the checkpoint after step 1 of epoch 1 (rank 0's view of the folder),
    while rank 1's view of the checkpoint folder, a copy elsewhere, also holds the one after
    step 2: a late write that rank 1 alone sees. Each rank reports what it opened and handed
    to collectives."""
    config = experiment(data_config, "resumed")
    source = RunPaths.of(uninterrupted).checkpoints
    kept = "ckpt-e0001-s0000001.pt"
    mine = RunPaths.of(config).checkpoints
    mine.mkdir(parents=True)
    shutil.copy(source / kept, mine / kept)
    other_root = module_tmp("rank1-view")
    rank1 = experiment(data_config, "resumed")
    rank1 = rank1.model_copy(update={"results_dir": str(other_root / "results")})
    theirs = RunPaths.of(rank1).checkpoints
    theirs.mkdir(parents=True)
    for name in (kept, "ckpt-e0001-s0000002.pt"):
        shutil.copy(source / name, theirs / name)
    (other_root / "results" / "data").symlink_to(config.results_path / "data")
    watch = module_tmp("watch")
    run_processes(config, WORLD, rank_configs=[config, rank1], watch=watch, timeout_s=120)
    reports = [json.loads((watch / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return config, reports


def test_every_rank_resumes_from_rank_0s_choice_and_ends_bit_identical(uninterrupted, resumed):
    config, _ = resumed
    a, b = final_state(uninterrupted), final_state(config)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_rank_0_reads_the_checkpoint(resumed):
    config, reports = resumed
    checkpoints = str(RunPaths.of(config).checkpoints)
    read = [p for p in reports[0]["opened"] if p.startswith(checkpoints)]
    assert read == [f"{checkpoints}/ckpt-e0001-s0000001.pt"]  # once, the newest
    assert not [p for p in reports[1]["opened"] if "ckpt-" in p]  # never, in either view


def test_no_collective_gets_a_host_tensor(resumed):
    """NCCL's rule, checked on gloo: every tensor handed to a collective was placed on the
    process's device. The collectives of every path were called: the DDP all-reduce, BN
    averaging, the loss and noise-scale sums, the checkpoint's broadcast and scatter, and the
    gathers of the per-rank state and the nodes' system metrics."""
    _, reports = resumed
    for rank, report in enumerate(reports):
        assert report["violations"] == [], f"rank {rank}:\n" + "\n".join(report["violations"])
        calls = report["collectives"]
        for name in ("all_reduce", "broadcast", "broadcast_object_list", "gather_object"):
            assert calls.get(name, 0) > 0, (rank, name, calls)
        assert calls.get("scatter_object_list") == 1, calls


def test_the_checker_sees_a_host_tensor_handed_to_a_collective():
    """The check above can fail: a tensor made without a device is caught."""
    import os

    import torch.distributed as dist

    from conftest import free_port
    from host_tensors import HostTensors

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with HostTensors() as host:
            placed = torch.zeros(2, device=torch.device("cpu"))
            dist.all_reduce(placed)
            dist.all_reduce(torch.tensor([1.0, 2.0]))  # no device: host memory on a GPU run
            dist.all_reduce((placed + 1).cpu())
    finally:
        dist.destroy_process_group()
    assert host.calls == {"all_reduce": 3}
    assert len(host.violations) == 2
