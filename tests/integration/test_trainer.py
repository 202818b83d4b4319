"""The real training loop on small shards, in this process and in two gloo processes."""

import itertools
import math
import os
from types import SimpleNamespace

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.launch import run_fingerprint
from pipeline.paths import RunPaths
from pipeline.tracking import Journal
from pipeline.train.distributed import init_distributed, shutdown_distributed
from pipeline.train.loop import Preempted, StopFlag, Trainer
from pipeline.train.model import build_model
from pipeline.train.step import NonFiniteLoss, TrainStep
from training_runs import (
    RANK_VARIABLES,
    epoch_metrics,
    experiment,
    final_state,
    run_in_process,
    run_processes,
    small_images,
)


@pytest.fixture(scope="module")
def data_config(module_tmp):
    """48 train / 12 val synthetic images in 3 classes, sharded once for this module."""
    return small_images(
        module_tmp("trainer"),
        16,
        train={"epochs": 1, "batch_per_worker": 8, "allreduce_dtype": "fp32"},
        schedule={"base_lr": 0.05},
    )


@pytest.mark.slow
def test_accumulate_2_on_1_process_equals_2_processes(data_config):
    one = experiment(data_config, "acc2", train={"accumulate": 2})
    two = experiment(data_config, "world2", launcher={"tasks_per_node": 2})
    assert one.global_batch == two.global_batch == 16
    summary = run_in_process(one)
    run_processes(two, 2)
    assert summary["iterations"] == 3
    a, b = final_state(one), final_state(two)
    for name in a:
        if a[name].is_floating_point():
            # Same images per step, BN per 8-image micro-batch: the same computation.
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    # and the same gradient noise scale: micro-batches of 8 against minibatches of 16
    noise_one, noise_two = epoch_metrics(one)[0], epoch_metrics(two)[0]
    for key in ("noise_scale", "noise_trace", "noise_grad_sq"):
        assert noise_one[key] == pytest.approx(noise_two[key], rel=1e-4), key
    torch.manual_seed(one.seed)
    initial = build_model(one.model, 3).state_dict()
    assert any(not torch.allclose(initial[n], a[n]) for n in a if a[n].is_floating_point())


def test_loader_workers_change_nothing_in_training(data_config):
    """Batches from worker processes (pooled shared buffers) train exactly as batches decoded
    in the training process: same images, same order, same weights."""
    in_process = experiment(data_config, "workers0", train={"epochs": 2})
    with_workers = experiment(
        data_config, "workers2", data={"loader_workers": 2}, train={"epochs": 2}
    )
    for config in (in_process, with_workers):
        assert run_in_process(config)["iterations"] == 12  # 48 images / 8, two epochs
    a, b = final_state(in_process), final_state(with_workers)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_validation_workers_live_only_while_validating(data_config, monkeypatch):
    """Training steps run beside the training loader's workers alone: the validation loader's
    start for each validation and are gone after it, not kept through training."""
    children = []
    original = TrainStep.__call__

    def counting_step(self, *args, **kwargs):
        children.append(len(psutil.Process().children()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", counting_step)
    config = experiment(data_config, "val-workers", data={"loader_workers": 2}, train={"epochs": 2})
    run_in_process(config)
    assert len(children) == 12  # 6 steps in each epoch, the second after a validation
    assert set(children) == {children[0]} and children[0] >= 2, children


@pytest.mark.slow
def test_the_compiled_optimizer_trains_as_the_plain_one(data_config):
    """train.compile_optimizer reaches the optimizer, leaves the fingerprint alone (a run may
    resume with either), and trains to the same weights up to rounding, which the RMSprop
    phase's division by sqrt(m) carries on from step to step."""
    plain = experiment(data_config, "eager", train={"epochs": 2})
    compiled = experiment(data_config, "compiled", train={"epochs": 2, "compile_optimizer": True})
    assert run_fingerprint(plain) == run_fingerprint(compiled)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    graphs.clear()
    run_in_process(plain)
    assert graphs["unique_graphs"] == 0
    run_in_process(compiled)
    assert graphs["unique_graphs"] >= 2  # one per parameter group, at the least
    torch.manual_seed(plain.seed)
    initial = build_model(plain.model, 3).state_dict()
    a, b = final_state(plain), final_state(compiled)
    names = [n for n in a if a[n].is_floating_point() and "running" not in n]
    moved = torch.cat([(a[n] - initial[n]).flatten() for n in names]).norm()
    apart = torch.cat([(a[n] - b[n]).flatten() for n in names]).norm()
    print(f"training moved the weights by {moved:.3g}; the two runs ended {apart:.3g} apart")
    assert moved > 0.1
    assert apart < 1e-3 * moved


def poison_loss_at(monkeypatch, iteration):
    """Make the training loss NaN at `iteration` (one micro-batch per step, one process), as a
    diverging run would, by wrapping the loss the training step computes."""
    import pipeline.train.step as step_module

    calls = itertools.count()

    def cross_entropy(logits, labels, **options):
        loss = torch.nn.functional.cross_entropy(logits, labels, **options)
        return loss * float("nan") if next(calls) == iteration else loss

    monkeypatch.setattr(step_module, "F", SimpleNamespace(cross_entropy=cross_entropy))


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(
    data_config, monkeypatch
):
    config = experiment(data_config, "nan", train={"epochs": 2, "checkpoint_every_min": 1e-6})
    poison_loss_at(monkeypatch, 4)
    with pytest.raises(NonFiniteLoss, match=r"NaN/Inf at iteration 4 \(epoch 0, step 4\)") as err:
        run_in_process(config)
    run = RunPaths.of(config)
    assert "ckpt-e0000-s0000004.pt" in str(err.value)  # saved before the bad step
    assert not run.final.exists()
    names = sorted(p.name for p in run.checkpoints.glob("*.pt"))
    assert names[-1] == "ckpt-e0000-s0000004.pt"
    checkpoint = torch.load(run.checkpoints / names[-1], weights_only=True)
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    mlflow_run = MlflowClient(config.tracking_uri).get_run(Journal(run.journal).run_id())
    assert mlflow_run.info.status == "FAILED"  # and says why
    assert mlflow_run.data.tags["end_reason"].startswith("NonFiniteLoss: the training loss")


RECIPES = [
    ("hybrid", "slow_start"),
    ("hybrid", "goyal"),
    ("sgd", "slow_start"),
    ("sgd", "goyal"),
    ("sgd", "poly"),
    ("rmsprop", "slow_start"),
    ("rmsprop", "goyal"),
    ("lars", "poly"),
    ("lars", "slow_start"),
]


@pytest.mark.parametrize(("optimizer", "schedule"), RECIPES)
def test_every_accepted_recipe_trains_and_logs_the_noise_scale(data_config, optimizer, schedule):
    """Each optimizer x schedule pair the config accepts runs an epoch: the loss stays finite,
    the weights move, and the epoch's noise scale is logged (2 micro-batches per step)."""
    lr = {"base_lr": 2.0} if optimizer == "lars" else {}
    config = experiment(
        data_config,
        f"{optimizer}-{schedule}",
        optimizer={"name": optimizer},
        schedule={"name": schedule, "warmup_epochs": 20, **lr},
        train={"accumulate": 2, "label_smoothing": 0.1},
    )
    summary = run_in_process(config)
    assert summary["iterations"] == 3
    metrics = epoch_metrics(config)[0]
    assert math.isfinite(metrics["train_loss"])
    assert metrics["noise_scale"] > 0 and metrics["noise_grad_sq"] > 0
    torch.manual_seed(config.seed)
    initial = build_model(config.model, 3).state_dict()
    final = final_state(config)
    assert any(not torch.equal(initial[n], final[n]) for n in final if "weight" in n)


def test_a_lars_run_stopped_mid_epoch_resumes_bit_identical(data_config):
    """LARS's momentum buffers and the epoch's noise-scale sums are in the checkpoint: a run
    stopped after its second step and resumed ends exactly where an uninterrupted one does."""
    recipe = {
        "optimizer": {"name": "lars"},
        "schedule": {"name": "poly", "base_lr": 2.0, "warmup_epochs": 20},
        "train": {"epochs": 2, "accumulate": 2, "label_smoothing": 0.1},
    }
    whole = experiment(data_config, "lars-whole", **recipe)
    run_in_process(whole)
    stopped = experiment(data_config, "lars-stopped", **recipe)
    for key in RANK_VARIABLES:
        os.environ.pop(key, None)
    env, _ = init_distributed(gpus_per_node=0)
    try:
        trainer = Trainer(stopped, env, run_fingerprint(stopped), StopFlag(requested=True))
        with pytest.raises(Preempted, match="stopped at iteration 1"):
            trainer.fit(None)
    finally:
        shutdown_distributed()
    assert (RunPaths.of(stopped).checkpoints / "ckpt-e0000-s0000001.pt").is_file()
    run_in_process(stopped)  # resumes from that checkpoint
    a, b = final_state(whole), final_state(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert epoch_metrics(whole)[-1]["noise_scale"] == epoch_metrics(stopped)[-1]["noise_scale"]


def test_system_metrics_of_every_node_reach_the_journal(data_config):
    """Two processes as two nodes: each node's first process samples its machine; rank 0
    logs its own and collects the other node's at the end of each epoch, under node ids."""
    config = experiment(
        data_config,
        "nodes2",
        launcher={"nodes": 2, "tasks_per_node": 1},
        tracking={"system_metrics_s": 0.2},
        train={"epochs": 2},
    )
    run_processes(config, 2)
    records = Journal(RunPaths.of(config).journal).read()
    system = [r for r in records if r.get("scope", "").startswith("system")]
    by_node = {r["scope"] for r in system}
    assert by_node == {"system/node_0", "system/node_1"}
    for scope in by_node:
        steps = [r["step"] for r in system if r["scope"] == scope]
        assert steps == list(range(len(steps))) and len(steps) >= 2, (scope, steps)
    sample = system[0]["metrics"]
    assert 0 <= sample["cpu_utilization_percentage"] <= 100
    assert sample["system_memory_usage_megabytes"] > 0
