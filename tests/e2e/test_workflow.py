"""The whole DAG as a user runs it: snakemake on the synthetic tree, a small model for 2 epochs,
then the report, `snakemake --report`, re-runs after config changes, an MLflow server, and a
config with two experiments."""

import csv
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import (
    PROJECT,
    free_port,
    mlflow_server,
    planned_rules,
    run_stage,
    write_config,
)
from conftest import (
    run_snakemake as snakemake,
)
from pipeline.config_files import load_config
from pipeline.experiments import expand_experiments
from pipeline.paths import ComparisonPaths, ReportPaths, RunPaths

pytestmark = pytest.mark.slow
SMALL_RUN = {
    "data": {"image_size": 32, "val_resize": 36, "loader_workers": 0},
    "model": {"arch": "resnet18"},
    "train": {"epochs": 2, "batch_per_worker": 32, "deterministic": True, "log_every": 2},
    "launcher": {"cluster": "local", "tasks_per_node": 1, "cpus_per_task": 2, "poll_s": 1},
    "schedule": {"base_lr": 0.1},
}


@pytest.fixture(scope="module")
def workflow(module_tmp, synthetic_tree):
    tmp = module_tmp("workflow")
    path = write_config(tmp, synthetic_tree.root, experiment="small", **SMALL_RUN)
    result = snakemake(tmp, "--cores", "2", "--configfile", str(path))
    return tmp, path, load_config(path), result


def test_every_artifact_exists_and_agrees_with_mlflow(workflow):
    _, _, config, _ = workflow
    report = ReportPaths.of(config)
    with open(report.metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch
    summary = json.loads(report.summary.read_text())
    client = MlflowClient(config.tracking_uri)
    history = client.get_metric_history(summary["mlflow_run_id"], "val_top1")
    last = max(history, key=lambda m: m.step)
    assert summary["final_val_top1"] == last.value
    assert float(rows[-1]["val_top1"]) == last.value
    assert summary["epochs"] == 2 and summary["global_batch"] == 32 and summary["world_size"] == 1
    assert summary["git_commit"] != "unknown" and "x 1" in summary["hardware"]
    assert report.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = report.markdown.read_text()
    assert (
        "| Akiba et al. (the paper) | Tesla P100 x 1,024 | Chainer | 32,768 | 15 min | 74.9 % |"
        in markdown
    )
    assert "this pipeline: `small`" in markdown and "```yaml" in markdown
    # one process, no accumulation: one batch size, so no noise scale, and the report says so
    assert summary["noise_scale"] is None and rows[-1]["noise_scale"] == ""
    assert "Gradient noise scale: not measured" in markdown
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "report")}
    assert artifacts == {
        f"report/{n}" for n in ("metrics.csv", "curves.png", "summary.json", "report.md")
    }
    # ... and they lie in the results folder, not in the folder Snakemake ran in.
    store = (config.results_path / "mlartifacts" / config.experiment).resolve()
    assert client.get_experiment_by_name(config.experiment).artifact_location == store.as_uri()
    assert (store / summary["mlflow_run_id"] / "artifacts" / "report" / "report.md").is_file()
    assert (RunPaths.of(config).root.parent.parent / "logs" / "report" / "small.log").is_file()


def test_snakemake_report_html(workflow):
    tmp, path, _, _ = workflow
    html = tmp / "report.html"
    snakemake(tmp, "--configfile", str(path), "--report", str(html))
    text = html.read_text(errors="replace")
    assert "curves.png" in text and "metrics.csv" in text and "summary.json" in text


def test_a_training_change_reruns_train_and_report_only(workflow):
    tmp, path, _, _ = workflow
    plan = snakemake(tmp, "-n", "--configfile", str(path), "--config", "train={epochs: 3}").stdout
    assert planned_rules(plan) == {"train", "report", "all"}, plan
    assert "Params have changed since last execution" in plan


def test_a_data_change_reruns_the_shards_and_everything_after(workflow):
    tmp, path, _, _ = workflow
    plan = snakemake(
        tmp, "-n", "--configfile", str(path), "--config", "data={jpeg_quality: 70}"
    ).stdout
    assert planned_rules(plan) == {"shard", "shard_index", "verify", "train", "report", "all"}
    assert "index" not in planned_rules(plan)


def test_nothing_to_do_when_nothing_changed(workflow):
    tmp, path, _, _ = workflow
    assert "Nothing to be done" in snakemake(tmp, "-n", "--configfile", str(path)).stdout


def test_an_mlflow_server_returns_the_run_over_rest(workflow, tmp_path):
    _, _, config, _ = workflow
    summary = json.loads(ReportPaths.of(config).summary.read_text())
    run_id = summary["mlflow_run_id"]
    store = config.results_path / "mlflow.db"
    port = free_port()
    with mlflow_server(port, tmp_path / "server", store=store) as uri:
        query = urllib.parse.urlencode({"run_id": run_id})
        with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/runs/get?{query}", timeout=30) as r:
            run = json.load(r)["run"]
        assert run["info"]["run_id"] == run_id
        assert run["info"]["run_name"].startswith("small-")
        metrics = {m["key"]: m for m in run["data"]["metrics"]}
        assert metrics["val_top1"]["value"] == summary["final_val_top1"]
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "val_top1"})
        url = f"{uri}/api/2.0/mlflow/metrics/get-history?{query}"
        with urllib.request.urlopen(url, timeout=30) as r:
            steps = sorted(m["step"] for m in json.load(r)["metrics"])
        assert steps == [0, 1]


def test_two_experiments_share_the_shards_and_are_compared(workflow):
    tmp, _, config, _ = workflow
    sweep = write_config(
        tmp,
        config.data.root_path,
        experiment="small",
        **SMALL_RUN,
        experiments=[
            {"experiment": "sgd-1ep", "optimizer": {"name": "sgd"}, "train": {"epochs": 1}},
            {"experiment": "hybrid-1ep", "train": {"epochs": 1, "accumulate": 2}},
        ],
    )
    plan = snakemake(tmp, "-n", "--configfile", str(sweep)).stdout
    assert planned_rules(plan) == {"mlflow_group", "train", "report", "compare", "all"}
    snakemake(tmp, "--cores", "2", "--configfile", str(sweep))
    experiments = expand_experiments(load_config(sweep))
    assert [e.global_batch for e in experiments] == [32, 64]
    comparison = ComparisonPaths.of(experiments[0])
    table = comparison.markdown.read_text()
    assert "| sgd-1ep | sgd + slow_start | sgd | slow_start | 32 | 0 | 1 |" in table
    assert "| hybrid-1ep | hybrid + slow_start | hybrid | slow_start | 64 | 0 | 1 |" in table
    assert comparison.plot.read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_runs_every_point_and_compares_means_over_seeds(workflow):
    """The sweep machinery in small: one method, two seeds, one epoch each."""
    tmp, _, config, _ = workflow
    sweep = write_config(
        tmp,
        config.data.root_path,
        experiment="tiny",
        **SMALL_RUN,
        sweep={"methods": {"akiba": {}}, "grid": {"seed": [0, 1], "train.global_batch": [64]}},
    )
    deep = yaml.safe_load(sweep.read_text())
    deep["train"]["epochs"] = 1
    sweep.write_text(yaml.safe_dump(deep))
    plan = snakemake(tmp, "reproduce", "-n", "--configfile", str(sweep)).stdout
    assert planned_rules(plan) == {"mlflow_group", "train", "report", "compare", "reproduce"}
    snakemake(tmp, "reproduce", "--cores", "2", "--configfile", str(sweep))
    names = [e.experiment for e in expand_experiments(load_config(sweep))]
    assert names == ["tiny-akiba-seed0-b64", "tiny-akiba-seed1-b64"]
    table = ComparisonPaths.of(load_config(sweep)).markdown.read_text()
    assert re.search(r"\| akiba \| 64 \| 3 \| [\d.]+ % \([\d.]+-[\d.]+, n=2\) \|", table)
    for name in names:
        assert f"| {name} | akiba |" in table
    # MLflow: one experiment for the sweep, its points nested under one parent run
    client = MlflowClient(load_config(sweep).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline.group") == "tiny"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.data.tags["point"] for r in children) == names
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["seed"] for r in children} == {"0", "1"}
    assert {r.data.tags["method"] for r in children} == {"akiba"}


def test_the_slurm_profile_passes_a_dry_run(workflow):
    tmp, path, _, _ = workflow
    result = snakemake(
        tmp,
        "-n",
        "-F",
        "--workflow-profile",
        str(PROJECT / "profiles" / "slurm"),
        "--configfile",
        str(path),
    )
    assert planned_rules(result.stdout) >= {"index", "shard", "verify", "train", "report"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data={jpeg_qualty: 80}", "unknown key 'data.jpeg_qualty' (did you mean"),
        ("sweep={grid: {train.global_batch: [100]}}", "must be a multiple of batch_per_worker"),
    ],
)
def test_a_bad_config_prints_our_message_and_nothing_else(tmp_path, override, message):
    result = snakemake(tmp_path, "-n", "--config", override, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and 'File "' not in result.stderr, result.stderr


LOAD_WITHOUT_THE_PROJECT = """
import json, sys, safetensors.torch, torch, torchvision
folder, inputs = sys.argv[1], sys.argv[2]
card = json.load(open(folder + "/model.json"))
net = torchvision.models.get_model(card["arch"], num_classes=card["num_classes"])
net.load_state_dict(safetensors.torch.load_file(folder + "/model.safetensors"))
torch.save(net.eval()(torch.load(inputs)), inputs + ".logits")
"""


def test_the_exported_model_loads_without_the_project_and_from_mlflow(workflow, tmp_path):
    """torchvision + safetensors alone (a separate interpreter, away from this repository)
    and mlflow.pytorch.load_model both give the trainer's network: the same logits."""
    import mlflow
    import torch

    from pipeline.train.model import build_model

    _, _, config, _ = workflow
    run = RunPaths.of(config)
    card = json.loads(run.model_card.read_text())
    assert card["arch"] == "resnet18" and card["num_classes"] == len(card["classes"]) == 10
    assert card["preprocessing"]["center_crop"] == 32 and len(card["preprocessing"]["mean"]) == 3
    final = torch.load(run.final, weights_only=True)
    trained = build_model(config.model, final["num_classes"])
    trained.load_state_dict(final["model"])
    inputs = torch.randn(4, 3, 32, 32)
    expected = trained.eval()(inputs)
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_THE_PROJECT, str(run.model_dir), "inputs.pt"],
        cwd=tmp_path,
        check=True,
    )
    assert torch.equal(torch.load(tmp_path / "inputs.pt.logits"), expected)

    summary = json.loads(ReportPaths.of(config).summary.read_text())
    client = MlflowClient(config.tracking_uri)
    assert client.get_run(summary["mlflow_run_id"]).data.tags["model_uri"] == summary["model_uri"]
    mlflow.set_tracking_uri(config.tracking_uri)
    # dst_path: MLflow otherwise downloads into a /tmp folder it never deletes.
    logged = mlflow.pytorch.load_model(summary["model_uri"], dst_path=str(tmp_path))
    torch.testing.assert_close(logged(inputs), expected, rtol=1e-5, atol=1e-5)


def test_evaluate_reproduces_the_last_validation_and_takes_other_resolutions(workflow, tmp_path):
    tmp, _, config, _ = workflow
    path = tmp_path / "small.yaml"  # the module's config file is rewritten by the sweep tests
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    summary = json.loads(ReportPaths.of(config).summary.read_text())
    snakemake(tmp, "evaluate", "--configfile", str(path))
    report = ReportPaths.of(config)
    default = json.loads(report.evaluation("final", 36, 32).read_text())
    assert default["top1"] == summary["final_val_top1"]  # the same images, the same counts
    assert default["top5"] == summary["final_val_top5"]
    resolution = ("data.val_resize=48", "data.image_size=40")
    run_stage("evaluate", "--config", str(path), "--set", *resolution)
    other = json.loads(report.evaluation("final", 48, 40).read_text())
    assert other["val_resize"] == 48 and other["image_size"] == 40 and 0 <= other["top1"] <= 1
    client = MlflowClient(config.tracking_uri)
    logged = client.get_run(summary["mlflow_run_id"]).data.metrics
    assert logged["eval/final/r36-c32/top1"] == default["top1"]
    assert logged["eval/final/r48-c40/top1"] == other["top1"]
