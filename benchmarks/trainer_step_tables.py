"""benchmarks/trainer_step.py's variants and the tables of its reports (docs/performance.md
renders them from the JSON): the step against the plain loops, and the optimizer step alone."""

from __future__ import annotations

# The plain loops every variant is compared with: how the table names them, their optimizer.
BASELINES = {
    "plain": ("plain loop (torch.optim.SGD)", "sgd"),
    "plain_rmsprop": ("plain loop (torch.optim.RMSprop)", "rmsprop"),
}
# Our step's variants: how the table names them, alpha_sgd, compiled optimizer update, and
# which steps measure the gradient noise scale ("log": one in LOG_EVERY, as training does;
# "every": all of them). The noise scale needs 2 processes (or accumulation), so the noise
# variants run with 2 processes only, and are also compared with ours_sgd_phase.
VARIANTS = {
    "ours_rmsprop_phase": ("ours, RMSprop phase", 0.5, False, None),
    "ours_sgd_phase": ("ours, SGD phase", 1.0, False, None),
    "ours_compiled_rmsprop_phase": ("ours, RMSprop phase, compiled update", 0.5, True, None),
    "ours_compiled_sgd_phase": ("ours, SGD phase, compiled update", 1.0, True, None),
    "ours_sgd_phase_noise": ("ours, SGD phase, noise scale on log steps", 1.0, False, "log"),
    "ours_sgd_phase_noise_every": ("ours, SGD phase, noise scale every step", 1.0, False, "every"),
}

COLUMNS = {
    "_vs_plain": "vs plain SGD loop",
    "_vs_plain_rmsprop": "vs plain RMSprop loop",
    "_vs_ours_sgd_phase": "vs ours, SGD phase",
}


def markdown(report: dict) -> str:
    """The step table of docs/performance.md, from the report's JSON: the columns of the
    comparisons the run made."""
    steps = report["step_ms"]

    def ratio(s: dict, key: str) -> str:
        if key not in s:
            return ""
        low, high = s[f"{key}_interval"]
        return f"{s[key]:.3f}x ({low:.3f}-{high:.3f})"

    keys = [k for k in COLUMNS if any(f"{v}{k}" in s for s in steps.values() for v in VARIANTS)]
    lines = [
        "| processes | step | ms/step | " + " | ".join(COLUMNS[k] for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for world, s in steps.items():
        for baseline in (b for b in BASELINES if b in s):
            lines.append(
                f"| {world} | {BASELINES[baseline][0]} | {s[baseline]:,.1f} |" + " |" * len(keys)
            )
        for variant in (v for v in VARIANTS if v in s):
            cells = "".join(f" {ratio(s, f'{variant}{k}')} |".replace("  |", " |") for k in keys)
            lines.append(f"| {world} | {VARIANTS[variant][0]} | {s[variant]:,.1f} |{cells}")
    return "\n".join(lines) + "\n"


def optimizer_markdown(report: dict) -> str:
    """The optimizer-step table of docs/performance.md, from the report's JSON."""
    optim = report["optimizer_ms"]
    sgd = optim["torch.optim.SGD momentum"]
    lines = ["| optimizer | ms/step | vs torch.optim.SGD |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {ms / sgd:.2f}x |" for name, ms in optim.items()]
    return "\n".join(lines) + "\n"
