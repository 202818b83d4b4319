"""Tracking: where MLflow puts a run's artifacts, and which MLflow key each journal scope gets."""

from pipeline.journal import metric_rows
from pipeline.tracking import create_run, mlflow_client


def test_artifacts_stay_beside_the_sqlite_store_whatever_the_working_folder(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default would put them in ./mlruns here
    uri = f"sqlite:///{results / 'mlflow.db'}"
    run_id = create_run(uri, "demo", "demo-run", {"lr": 0.1}, {})
    note = tmp_path / "note.txt"
    note.write_text("kept")
    mlflow_client(uri).log_artifact(run_id, str(note), artifact_path="report")
    kept = results / "mlartifacts" / "demo" / run_id / "artifacts" / "report" / "note.txt"
    assert kept.read_text() == "kept"
    assert list(elsewhere.iterdir()) == []
    # A second run of the experiment finds it and keeps its artifacts in the same place.
    second = create_run(uri, "demo", "demo-run-2", {}, {})
    mlflow_client(uri).log_artifact(second, str(note))
    assert (results / "mlartifacts" / "demo" / second / "artifacts" / "note.txt").is_file()


def test_each_scope_has_its_own_mlflow_key_space():
    record = {"type": "metrics", "time_ms": 1, "step": 3}
    rows = metric_rows(
        [
            {**record, "scope": "epoch", "metrics": {"val_top1": 0.5}},
            {**record, "scope": "iteration", "metrics": {"lr": 0.1}},
            {**record, "scope": "system", "metrics": {"cpu_utilization_percentage": 50.0}},
            {**record, "scope": "system/node_2", "metrics": {"cpu_utilization_percentage": 7.0}},
        ]
    )
    assert [key for key, *_ in rows] == [
        "val_top1",
        "iter/lr",
        "system/cpu_utilization_percentage",
        "system/node_2/cpu_utilization_percentage",
    ]
