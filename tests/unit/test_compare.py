import json

import pytest

from pipeline.compare import write_comparison
from pipeline.config_files import config_from_mapping
from pipeline.errors import PipelineError
from pipeline.paths import ComparisonPaths
from pipeline.report import plot_curves


def _summary(experiment, method, batch, seed, top1, noise_scale=None):
    return {
        "noise_scale": noise_scale,
        "experiment": experiment,
        "method": method,
        "optimizer": "hybrid",
        "schedule": "slow_start",
        "global_batch": batch,
        "steps_per_epoch": 4,
        "seed": seed,
        "epochs": 2,
        "final_val_top1": top1,
        "best_val_top1": top1 + 0.01,
        "final_val_top5": 0.9,
        "wall_time_s": 61.0,
    }


@pytest.fixture
def config(tmp_path):
    return config_from_mapping(
        {"experiment": "x", "results_dir": str(tmp_path), "data": {"name": "d", "root": "/d"}}
    )


def test_compare_reads_exactly_the_given_summaries_with_mean_and_spread(config, tmp_path):
    files = []
    runs = [("a-s0", 0, 0.40, 300.0), ("a-s1", 1, 0.50, 500.0), ("b-s0", 0, 0.30, None)]
    for name, seed, top1, noise in runs:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_summary(name, name[0], 2048, seed, top1, noise)))
        files.append(path)
    write_comparison(config, files)
    paths = ComparisonPaths.of(config)
    text = paths.markdown.read_text()
    assert (
        "| a | 2,048 | 4 | 45.00 % (40.00-50.00, n=2) | 46.00 % (41.00-51.00, n=2) | 400 | 2 |"
        in text
    )
    assert "| b | 2,048 | 4 | 30.00 % | 31.00 % | - | 1 |" in text  # not measured: no number
    assert text.count("| a-s") == 2 and text.count("| b-s0 |") == 1
    assert paths.plot.read_bytes().startswith(b"\x89PNG")


def test_compare_names_the_missing_reports_and_writes_nothing(config, tmp_path):
    there = tmp_path / "there.json"
    there.write_text(json.dumps(_summary("there", "a", 64, 0, 0.5)))
    with pytest.raises(PipelineError, match=r"no report yet for 1 of 2 .*missing\.json"):
        write_comparison(config, [there, tmp_path / "missing.json"])
    assert not ComparisonPaths.of(config).markdown.exists()


def test_curves_plot_the_noise_scale_or_say_it_was_not_measured(tmp_path):
    rows = [
        {"epoch": e, "val_top1": 0.5, "val_top5": 0.9, "train_loss": 1.0, "noise_scale": n}
        for e, n in enumerate([120.0, 250.0])
    ]
    series = {"epoch": [(1, 0.5)], "lr": [(1, 0.1)], "alpha_sgd": [(1, 1.0)]}
    for name, plotted in (("measured", rows), ("unmeasured", [dict(r) for r in rows])):
        if name == "unmeasured":
            for row in plotted:
                del row["noise_scale"]
        plot_curves(plotted, series, name, tmp_path / f"{name}.png", global_batch=512)
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
