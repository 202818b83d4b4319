"""Several trainings opening one new SQLite store at the same moment, as a sweep's first runs
do: MLflow makes the store's tables on first use, and two processes making them at once fail."""

import multiprocessing as mp

from pipeline.tracking import create_run, mlflow_client

TRAININGS = 4


def open_and_create(uri: str, name: str, barrier, out) -> None:
    barrier.wait()  # all at once, on a store that does not exist yet
    try:
        out.put((name, create_run(uri, "sweep", name, {"name": name}, {})))
    except Exception as err:  # reported to the test, which names it
        out.put((name, f"{type(err).__name__}: {err}"))


def test_trainings_that_open_a_new_sqlite_store_at_once_all_get_their_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(TRAININGS), context.Queue()
    processes = [
        context.Process(target=open_and_create, args=(uri, f"run-{i}", barrier, out))
        for i in range(TRAININGS)
    ]
    for process in processes:
        process.start()
    results = dict(out.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    client = mlflow_client(uri)
    for name, run_id in results.items():
        assert client.get_run(run_id).info.run_name == name, run_id  # not an error message
    [experiment] = [e for e in client.search_experiments() if e.name == "sweep"]
    assert len(client.search_runs([experiment.experiment_id])) == TRAININGS
