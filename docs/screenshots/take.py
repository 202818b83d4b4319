"""The README's pictures of MLflow, taken from a real run with headless Chromium.

    apt-get install chromium && pip install playwright      # once; not needed otherwise
    python docs/screenshots/take.py --store results/mlflow.db --experiment demo

starts `mlflow server` over the store on a free local port, switches the UI to its
model-training view, and photographs the newest finished run of the experiment (overview,
metric charts, system metrics) and the experiment's run list into docs/screenshots/*.png.
Playwright drives Debian's Chromium (no browser download): MLflow's single-page app keeps
polling, so each page gets a fixed time to draw rather than a wait for an idle network.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from pipeline.ports import free_port  # noqa: E402
from pipeline.tracking_server import mlflow_server  # noqa: E402

DRAW_MS = 10_000  # charts of a few thousand points draw within this on 2 CPU cores


def newest_finished_run(base: str, experiment_name: str) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(base)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        sys.exit(f"no MLflow experiment {experiment_name!r} in the store")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    runs = [r for r in runs if "pipeline.group" not in r.data.tags]  # not a sweep's parent
    if not runs:
        sys.exit(f"no finished run in {experiment_name!r}")
    return experiment.experiment_id, runs[0].info.run_id


def photograph(base: str, experiment_id: str, run_id: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("no chromium on PATH: `apt-get install chromium` (Debian) first")
    run = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(run)
        page.wait_for_timeout(DRAW_MS // 2)
        page.get_by_text("Model training", exact=True).first.click()  # not the GenAI view
        page.wait_for_timeout(DRAW_MS // 5)
        shots = {
            "mlflow-run.png": run,
            "mlflow-run-charts.png": f"{run}/model-metrics",
            "mlflow-run-system.png": f"{run}/system-metrics",
            "mlflow-runs.png": f"{base}/#/experiments/{experiment_id}",
        }
        for name, url in shots.items():
            page.goto(url)
            page.wait_for_timeout(DRAW_MS)
            close = page.get_by_role("button", name="Close", exact=True)  # the assistant panel
            if close.count():
                close.first.click()
                page.wait_for_timeout(500)
            page.screenshot(path=str(out / name))
            print(f"wrote {out / name}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="the run's mlflow.db")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    store_uri = f"sqlite:///{args.store.resolve()}"
    with mlflow_server(store_uri, free_port(), args.out / "server.log") as base:
        experiment_id, run_id = newest_finished_run(base, args.experiment)
        args.out.mkdir(parents=True, exist_ok=True)
        photograph(base, experiment_id, run_id, args.out)
    (args.out / "server.log").unlink()


if __name__ == "__main__":
    main()
