"""docs/performance.md's tables and commands, from the JSON each benchmark wrote: every table
is the benchmark's own `markdown` of its report, and every command is rebuilt from the
arguments the report records. Called from the page's cog blocks."""

from __future__ import annotations

import ast
import importlib
import statistics
import sys

import figures as f

sys.path.insert(0, str(f.ROOT))

# Report arguments that are not options to repeat: where files went on that machine, or a
# value the script derives.
NOT_OPTIONS = {"out", "work", "data", "baselines"}


def table(report: str, render: str = "markdown") -> str:
    """The table `render` of the benchmark that wrote docs/performance/`report`."""
    data = f.performance(report)
    module = importlib.import_module(f"benchmarks.{data['benchmark']}")
    return getattr(module, render)(data)


def command(report: str) -> str:
    """The command that wrote docs/performance/`report`, and the machine it ran on, as a
    shell block (tests/e2e/test_doc_commands.py checks that its options still exist)."""
    data = f.performance(report)
    words = [f"python benchmarks/{data['benchmark']}.py"]
    for key, text in data["args"].items():
        if key in NOT_OPTIONS:
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        option = "--" + key.replace("_", "-")
        if value is True:
            words.append(option)
        elif isinstance(value, list):
            words += [option, *(str(v) for v in value)]
        elif value not in (False, None):
            words.append(f"{option} {value}")
    lines, line = [], words[0]
    for word in words[1:]:  # wrapped at the page's width, continued with backslashes
        if len(line) + len(word) > 88 or (word.startswith("--") and len(line) > 60):
            lines.append(line + " \\")
            line = "    " + word
        else:
            line += " " + word
    shell = "\n".join([*lines, line])
    return f"```bash\n{shell}\n```\n\nOn {data['machine']}, torch {data['torch']}.\n"


def plan_table() -> str:
    plan = f.performance("plan.json")["check_against_paper"]
    rows = [
        "| | time for 90 epochs | scaling efficiency vs one GPU |",
        "|---|---|---|",
        f"| the model at the links' rated speed | {plan['rated_time_s']:,.0f} s | "
        f"{100 * plan['rated_efficiency']:.0f} % |",
        f"| the paper | about {plan['paper_time_s']:,.0f} s | about "
        f"{100 * plan['paper_efficiency']:.0f} % |",
        f"| the model at {100 * plan['bandwidth_efficiency_matching_paper']:.0f} % of rated "
        f"bandwidth (what reproduces {plan['paper_time_s']:,.0f} s) | {plan['paper_time_s']:,.0f} "
        f"s | {100 * plan['matched_efficiency']:.0f} % |",
    ]
    return "\n".join(rows) + "\n"


def _interval(value: float, low: float, high: float, percent: bool = False) -> str:
    if percent:
        # one decimal: a share a few tenths under its goal must not print as the goal
        return f"{100 * value:.1f} % ({100 * low:.1f}-{100 * high:.1f})"
    return f"{value:.2f}x ({low:.2f}-{high:.2f})"


def goals_table() -> str:
    """The goals and where each stands, from the reports."""
    loader = {r["images"]: r for r in f.performance("loader.json")["results"]}
    given, varied = loader["as given"], loader["varied size"]
    vs_folder = " on 224 px images; ".join(
        _interval(r["ratio"], *r["ratio_interval"]) for r in (given, varied)
    )
    vs_ceiling = " on 224 px images; ".join(
        _interval(r["share_of_ceiling"], *r["share_of_ceiling_interval"], percent=True)
        for r in (given, varied)
    )
    vs_loops = " and ".join(
        f"{100 * r['share_of_concurrent_ceiling']:.1f} %" for r in (given, varied)
    )
    ceiling_met = [r["share_of_ceiling"] >= 0.85 for r in (given, varied)]
    pre = f.performance("preprocess.json")
    reencode = pre["ceiling_img_s"]["decode_and_reencode"]
    large = {
        jobs: statistics_median(pre["runs"][f"snakemake --cores {jobs}, ImageNet-sized shards"])
        / reencode
        for jobs in (1, 2)
    }
    step = f.performance("trainer_step.json")["step_ms"]
    step224 = f.performance("trainer_step_224.json")["step_ms"]["1"]
    own = [
        step[w][k]
        for w in ("1", "2")
        for k in ("ours_sgd_phase_vs_plain", "ours_rmsprop_phase_vs_plain_rmsprop")
    ] + [step224["ours_sgd_phase_vs_plain"], step224["ours_rmsprop_phase_vs_plain_rmsprop"]]

    def pair(key: str) -> str:
        return f"{step['1'][key]:.3f}x / {step['2'][key]:.3f}x"

    training = (
        f"64 px: SGD phase {pair('ours_sgd_phase_vs_plain')} (1 / 2 processes); RMSprop phase "
        f"{pair('ours_rmsprop_phase_vs_plain_rmsprop')} against a plain RMSprop loop, "
        f"{pair('ours_rmsprop_phase_vs_plain')} against plain SGD, "
        f"{pair('ours_compiled_rmsprop_phase_vs_plain')} compiled. 224 px, 1 process: "
        f"{step224['ours_sgd_phase_vs_plain']:.3f}x (SGD phase), "
        f"{step224['ours_rmsprop_phase_vs_plain']:.3f}x / "
        f"{step224['ours_rmsprop_phase_vs_plain_rmsprop']:.3f}x (RMSprop phase)"
    )
    against_sgd = max(step[w]["ours_rmsprop_phase_vs_plain"] for w in ("1", "2"))
    training_met = "yes" if max(own) <= 1.03 else "no"
    if training_met == "yes" and against_sgd > 1.03:
        training_met = "yes, but for the RMSprop phase against plain SGD at 64 px (see there)"
    allreduce = f.performance("allreduce.json")
    half = allreduce["fp16_is_half_of_fp32"]
    memory = f.performance("host_memory.json")["rows"]
    default_faults = statistics_median([{"x": m} for m in memory["default"]["median_faults"]], "x")
    kept_faults = max(memory["retained"]["median_faults"])
    plan = f.performance("plan.json")["check_against_paper"]
    lars = f.performance("lars_step.json")["results"]
    vs_sgd = {
        k.split(" / ")[0]: (v, lars["intervals"][k])
        for k, v in lars["ratios"].items()
        if k.endswith("/ torch.optim.SGD")
    }
    lars_text = "; ".join(
        f"{name.removeprefix('LARS, ')} {_interval(v, *interval)}"
        for name, (v, interval) in vs_sgd.items()
        if name.startswith("LARS, ")
    )
    cpu_default = vs_sgd["LARS, per tensor (CPU default)"][0]
    gpu = (f.PERFORMANCE / "gpu.json").is_file()
    rows = [
        "| benchmark | goal | measured | met |",
        "|---|---|---|---|",
        f"| [loader](#loader) vs torchvision's ImageFolder | >= 3.0x | {vs_folder} on varied "
        f"sizes | {_yes(min(given['ratio_interval'][0], varied['ratio_interval'][0]) >= 3.0)} |",
        f"| [loader](#loader) vs its ceiling (one-core loop x workers) | >= 85 % | "
        f"{vs_ceiling} on varied sizes (against two loops at once: {vs_loops}) | "
        f"{'yes' if all(ceiling_met) else 'varied only' if ceiling_met[1] else 'no'} |",
        f"| [preprocessing](#preprocessing) shard job vs forced re-encode on one core | >= 80 % "
        f"| {100 * large[1]:.0f} % (1 job) and {100 * large[2]:.0f} % (2 jobs) on "
        f"ImageNet-sized shards | {_yes(min(large.values()) >= 0.8)} |",
        f"| [training step](#training-step) vs a plain PyTorch loop | <= 1.03x | {training} | "
        f"{training_met} |",
        f"| [LARS step](#lars-step) vs torch.optim.SGD's, ResNet-50's shapes | <= 1.3x | "
        f"{lars_text} | {_yes(cpu_default <= 1.3)} (the CPU default) |",
        f"| [fp16 all-reduce](#gradient-all-reduce) bytes | half of fp32 | "
        f"{allreduce['results']['fp16']['bytes_per_step']:,} vs "
        f"{allreduce['results']['fp32']['bytes_per_step']:,} bytes per step | {_yes(half)} |",
        f"| [host memory](#host-memory) | no page faults per CPU step | median "
        f"{default_faults:,.0f} faults per step with glibc's defaults, {kept_faults:,.0f} with "
        f"freed memory kept | {_yes(kept_faults < 1000)} |",
        f"| [scaling model](#scaling-model) vs the paper | about {plan['paper_time_s']:,.0f} s, "
        f"{100 * plan['paper_efficiency']:.0f} % | {plan['rated_time_s']:,.0f} s, "
        f"{100 * plan['rated_efficiency']:.0f} % at rated bandwidth; the paper's time at "
        f"{100 * plan['bandwidth_efficiency_matching_paper']:.0f} % of it, "
        f"{100 * plan['matched_efficiency']:.0f} % | see there |",
        "| [GPU](#gpu) (H200) | >= 3,000 img/s training fed by our loader; loader >= 1.2x that "
        f"| {'see there' if gpu else 'not measured: no GPU was available'} | - |",
    ]
    return "\n".join(rows) + "\n"


def statistics_median(runs: list[dict], key: str = "shard_job_img_s") -> float:
    return statistics.median(r[key] for r in runs)


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def loader_one_process() -> str:
    """The profile's one-process figures, as a sentence."""
    one = f.performance("loader_profile.json")["one_process"]
    return (
        f"In one process, paired batch by batch, reading each row with its crc32 check adds "
        f"{100 * (one['read_vs_ceiling_loop'] - 1):.1f} % to the ceiling's loop, and writing "
        f"into a shared batch buffer instead of one hot image "
        f"{100 * (one['batch_buffer_vs_ceiling_loop'] - 1):.1f} %. Making a pool buffer of "
        f"{one['buffer_mb']:.1f} MB, every page written, takes "
        f"{one['make_shared_buffer_ms']:.1f} ms ({one['make_private_buffer_ms']:.1f} ms for "
        "fresh private memory).\n"
    )


def loader_one_worker() -> str:
    """The one-worker run's share of the one-core ceiling, as a sentence."""
    run = f.performance("loader_one_worker.json")
    one = run["results"][0]
    low, high = one["share_of_ceiling_interval"]
    return (
        f"With one worker ({run['args']['repeats']} repeats, the options otherwise as above), "
        f"the consumer has a core of its own: our loader delivers {one['ours_img_s']:,.0f} "
        f"img/s, {100 * one['share_of_ceiling']:.1f} % ({100 * low:.1f}-{100 * high:.1f} %) of "
        f"the one-core ceiling ({one['ceiling_one_core_img_s']:,.0f} img/s).\n"
    )


def loader_share_table() -> str:
    """From the one-core ceiling to our loader, step by step (the profile's medians): what each
    part of a worker's job costs while both cores run, as a share of the ceiling x workers."""
    runs = f.performance("loader_profile.json")["runs"]
    rows = [
        ("ceiling x 2 (one-core loop, one hot image)", "ceiling_x_workers_img_s"),
        ("two loops at once, one hot image each", "loops_at_once_img_s"),
        ("... each image into its slot of rotating batch buffers", "into_batch_buffers_img_s"),
        ("... and each row read (crc32 check) in the loop", "reading_rows_too_img_s"),
        ("our loader, 2 workers (consumer under cProfile)", "images_per_s"),
    ]
    lines = ["| 224 px, batch 64 | images/s | share of ceiling x 2 |", "|---|---|---|"]
    for label, key in rows:
        rate = statistics.median(r[key] for r in runs)
        share = statistics.median(r[key] / r["ceiling_x_workers_img_s"] for r in runs)
        lines.append(f"| {label} | {rate:,.0f} | {100 * share:.1f} % |")
    return "\n".join(lines) + "\n"


def loader_profile_table(before: str, after: str, columns: tuple[str, str]) -> str:
    """Two loader profiles side by side: a design and the one it replaced."""
    runs = {columns[0]: f.performance(before), columns[1]: f.performance(after)}
    rows = [
        ("images/s", "images_per_s", "{:,.0f}"),
        ("wall ms per batch", "wall_ms_per_batch", "{:.1f}"),
        ("consumer CPU ms per batch", "consumer_cpu_ms_per_batch", "{:.2f}"),
        ("workers' CPU us per image", "worker_cpu_us_per_image", "{:.0f}"),
        ("the ceiling's us per image (one-core loop)", "ceiling_us_per_image", "{:.0f}"),
        ("workers' page faults per batch", "worker_page_faults_per_batch", "{:.1f}"),
        ("workers busy (share of the wall time)", "workers_busy", "{:.0%}"),
        ("cores busy", "cores_busy", "{:.0%}"),
    ]
    lines = [f"| per batch of 64, 2 workers | {' | '.join(runs)} |", "|---|---|---|"]
    for label, key, form in rows:
        if not all(key in run for run in runs.values()):
            continue  # a figure the older profile did not record
        cells = " | ".join(form.format(run[key]).replace("%", " %") for run in runs.values())
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"
