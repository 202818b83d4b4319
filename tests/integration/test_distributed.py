"""Real torch.distributed: two gloo processes on this machine."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import free_port
from pipeline.train.distributed import AllReduceState, allreduce_hook, average_bn_stats, wrap_ddp

WORLD = 2


def _entry(rank, fn, port, out_dir, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(fn(rank, *args), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn, tmp_path, *args):
    mp.start_processes(
        _entry, args=(fn, free_port(), tmp_path, args), nprocs=WORLD, start_method="fork"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=1.0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )


class _Env:  # what wrap_ddp needs to know about the process
    def __init__(self, rank):
        self.rank, self.local_rank, self.device = rank, rank, torch.device("cpu")
        self.world_size = WORLD


def _bn_after_training(rank, wrapper):
    model = tiny_model()
    if wrapper == "ours":
        ddp, _ = wrap_ddp(model, _Env(rank), "fp32")
    else:  # DDP's default: broadcast rank 0's buffers at every forward
        ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    for step in range(2):
        torch.manual_seed(100 * rank + step)
        x = torch.randn(5, 3, 8, 8) * (1 + rank) + 3 * rank  # each rank sees other data
        ddp(x).sum().backward()
        opt.step()
        opt.zero_grad()
    last_batch = model[1].running_mean.clone(), model[1].running_var.clone()
    # A forward through the wrapper before averaging, e.g. an evaluation pass.
    ddp.eval()
    with torch.no_grad():
        ddp(torch.zeros(1, 3, 8, 8))
    ddp.train()
    average_bn_stats(model)
    return {"last_batch": last_batch, "averaged": (model[1].running_mean, model[1].running_var)}


@pytest.mark.parametrize("wrapper", ["ours", "ddp-default"])
def test_bn_statistics_are_the_mean_over_ranks(tmp_path, wrapper):
    results = run_ranks(_bn_after_training, tmp_path, wrapper)
    mean = [torch.stack([r["last_batch"][i] for r in results]).mean(0) for i in (0, 1)]
    assert not torch.allclose(results[0]["last_batch"][0], results[1]["last_batch"][0])
    for r in results:
        for got, expected, rank0 in zip(r["averaged"], mean, results[0]["last_batch"], strict=True):
            if wrapper == "ours":
                torch.testing.assert_close(got, expected)
            else:
                # The default silently turned "average of all workers" into rank 0's batch.
                torch.testing.assert_close(got, rank0)
                assert not torch.allclose(got, expected)


def _gradients(rank, dtype):
    model = nn.Linear(64, 32)
    torch.manual_seed(0)
    nn.init.normal_(model.weight)
    ddp = DistributedDataParallel(model, bucket_cap_mb=1)
    if dtype is not None:
        ddp.register_comm_hook(AllReduceState(None, dtype), allreduce_hook)
    torch.manual_seed(rank + 1)
    x = torch.randn(16, 64)
    ddp(x).pow(2).sum().backward()
    local = nn.Linear(64, 32)
    local.load_state_dict(model.state_dict())
    local(x).pow(2).sum().backward()
    return {"reduced": model.weight.grad.clone(), "local": local.weight.grad.clone()}


def test_fp16_hook_matches_an_fp32_all_reduce(tmp_path):
    fp32 = run_ranks(_gradients, tmp_path, None)  # DDP's own fp32 averaging
    expected = (fp32[0]["local"] + fp32[1]["local"]) / 2
    torch.testing.assert_close(fp32[0]["reduced"], expected)
    for dtype, rtol in [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        ours = run_ranks(_gradients, tmp_path, dtype)
        for r in ours:
            assert r["reduced"].dtype == torch.float32
            # Relative to the largest gradient: a sum of opposite-sign values loses relative
            # precision near zero whatever the dtype.
            scale = expected.abs().max().item()
            torch.testing.assert_close(r["reduced"], expected, rtol=rtol, atol=rtol * scale)
        assert torch.equal(ours[0]["reduced"], ours[1]["reduced"])


def _large_gradients(rank):
    """fp16 overflows at 65504: 2 ranks x 40000 summed first would be inf; divided first, not."""
    model = nn.Linear(1, 8, bias=False)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(AllReduceState(None, torch.float16), allreduce_hook)
    ddp(torch.full((1, 1), 40000.0)).sum().backward()  # every gradient is 40000
    naive = torch.full((8,), 40000.0, dtype=torch.float16)
    dist.all_reduce(naive)  # sum first, as ChainerMN did
    return {"ours": model.weight.grad.flatten(), "naive": naive.float()}


def test_dividing_before_the_sum_avoids_fp16_overflow(tmp_path):
    result = run_ranks(_large_gradients, tmp_path)[0]
    assert torch.all(result["ours"] == 40000)
    assert torch.all(torch.isinf(result["naive"]))


def _beyond_fp16(rank):
    """Gradients above fp16's largest value (65,504) on one rank, whose mean is within it."""
    model = nn.Linear(1, 4, bias=False)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(AllReduceState(None, torch.float16), allreduce_hook)
    x = torch.full((1, 1), [90000.0, 30000.0][rank])
    ddp(x).sum().backward()  # the gradient of weight i is x: 90,000 on rank 0, 30,000 on rank 1
    return model.weight.grad.flatten()


def test_gradients_beyond_fp16_before_the_division_come_back_finite_and_exact(tmp_path):
    """Cast after dividing: 90,000 / 2 fits fp16, 90,000 itself does not."""
    grads = run_ranks(_beyond_fp16, tmp_path)
    expected = torch.full((4,), 60000.0)  # (90,000 + 30,000) / 2
    spacing = 32.0  # between fp16 values from 32,768 to 65,504
    for grad in grads:
        assert torch.isfinite(grad).all(), grad
        assert (grad - expected).abs().max() <= spacing, grad
