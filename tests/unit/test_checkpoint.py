import random

import numpy as np
import pytest
import torch

from pipeline.train import checkpoint


def state(epoch, step, value=1.0):
    return {
        "epoch": epoch,
        "step": step,
        "model": {"w": torch.full((3,), value)},
        "rng": checkpoint.rng_state(),
    }


def test_keeps_the_newest_by_position_not_by_file_time(tmp_path):
    for epoch, step in [(0, 5), (1, 0), (0, 10), (1, 3)]:
        checkpoint.save(tmp_path, state(epoch, step), keep=3)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-e0000-s0000010.pt", "ckpt-e0001-s0000000.pt", "ckpt-e0001-s0000003.pt"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_loads_with_weights_only_and_restores_rng(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    checkpoint.save(tmp_path, state(2, 0), keep=2)
    expected = (torch.rand(2), random.random(), np.random.rand())
    loaded = checkpoint.load_latest(tmp_path)
    checkpoint.set_rng_state(loaded.state["rng"])
    assert torch.equal(torch.rand(2), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    checkpoint.save(tmp_path, state(0, 4, value=1.0), keep=3)
    newest = checkpoint.save(tmp_path, state(0, 8, value=2.0), keep=3)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        loaded = checkpoint.load_latest(tmp_path)
    assert loaded.path.name == "ckpt-e0000-s0000004.pt"
    assert torch.equal(loaded.state["model"]["w"], torch.ones(3))
    assert "falling back to the one before" in capsys.readouterr().err


def test_nothing_to_load(tmp_path):
    assert checkpoint.load_latest(tmp_path / "none") is None


def test_a_gpu_process_keeps_its_own_generator_and_resumes_on_any_gpu(monkeypatch):
    """Only the process's own GPU's RNG state is saved, and it is restored to the GPU the
    process has when it resumes, which may be on a node that shows it one GPU, not eight.
    (CUDA stood in for: there is no GPU here.)"""
    states = {3: torch.tensor([3, 1, 4], dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device.index].clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.update({device: s}))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("every GPU's"))
    saved = checkpoint.rng_state(torch.device("cuda", 3))
    checkpoint.set_rng_state(saved, torch.device("cuda", 0))
    assert list(restored) == [torch.device("cuda", 0)]
    assert torch.equal(restored[torch.device("cuda", 0)], states[3])
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))
