import dataclasses
import json

import pytest

from pipeline import plan
from pipeline.cli import main


def test_one_gpu_has_no_communication_and_full_efficiency():
    p = plan.predict(plan.Inputs(gpus=1, batch_per_gpu=32, images_per_s_per_gpu=200.0))
    assert p.allreduce_s == 0 and p.efficiency == 1.0
    assert p.iterations == 90 * (plan.IMAGENET_TRAIN // 32)
    assert p.time_to_train_s == pytest.approx(p.iterations * 32 / 200.0)


def test_ring_allreduce_terms():
    inputs = plan.Inputs(
        gpus=16,
        batch_per_gpu=32,
        images_per_s_per_gpu=100.0,
        parameters=1_000_000,
        allreduce_dtype="fp32",
        gpus_per_node=8,
        network_bytes_per_s=1e9,
        node_bytes_per_s=1e10,
        latency_s=0.0,
    )
    p = plan.predict(inputs)
    size = 4e6
    expected = 2 * 7 / 8 * size / 1e10 + 2 * 1 / 2 * size / 1e9
    assert p.allreduce_s == pytest.approx(expected)
    half = plan.predict(dataclasses.replace(inputs, allreduce_dtype="fp16"))
    assert half.allreduce_s == pytest.approx(expected / 2)


def test_overlap_hides_communication_behind_backward():
    base = plan.Inputs(gpus=64, batch_per_gpu=32, images_per_s_per_gpu=100.0)
    exposed = plan.predict(base).exposed_s
    hidden = plan.predict(dataclasses.replace(base, overlap=1.0)).exposed_s
    assert exposed > 0 and hidden == pytest.approx(max(0.0, exposed - 2 / 3 * 0.32))


def test_the_paper_check():
    check = plan.check_against_paper()
    # At rated link speed the model is an optimistic bound on the paper's 898 s ...
    assert 700 < check["rated_time_s"] < check["paper_time_s"]
    # ... and the bandwidth that reproduces 898 s gives the paper's ~70 % efficiency.
    assert 0.2 < check["bandwidth_efficiency_matching_paper"] < 0.6
    assert check["matched_efficiency"] == pytest.approx(0.70, abs=0.05)
    fitted = plan.paper_inputs(check["bandwidth_efficiency_matching_paper"])
    assert plan.predict(fitted).time_to_train_s == pytest.approx(898, rel=1e-3)


def test_plan_command_states_inputs_and_sources(capsys):
    assert main(["plan", "--gpus", "256", "--parameters", "25557032", "--check-paper"]) == 0
    out = capsys.readouterr().out
    assert "global batch 8,192" in out and "Sources:" in out and "TensorFlow" in out
    assert "the paper: about 898 s" in out


def test_plan_json_holds_the_printed_figures(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "--parameters", "25557032", "--check-paper", "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["inputs"]["gpus"] == 1024 and record["inputs"]["parameters"] == 25557032
    check = record["check_against_paper"]
    assert f"{check['rated_time_s']:.0f} s" in capsys.readouterr().out
    assert record["prediction"]["time_to_train_s"] == pytest.approx(check["rated_time_s"])
