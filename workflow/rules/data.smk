# Data stages: demo-data -> index -> shard (one job per shard) -> shard_index -> verify.
# Each job's `benchmark:` file beside its log holds its wall time and its CPU time and peak
# memory (Snakemake samples them), which is what sizing `runtime` and `mem_mb` on Slurm needs.


rule demo_data:
    output:
        done=DATA.demo_done,
    log:
        LOGS / "demo_data.log",
    benchmark:
        LOGS / "demo_data.benchmark.tsv"
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
        fingerprint=fingerprint("demo_data"),
    shell:
        "python -m pipeline demo-data --config {params.config} > {log} 2>&1"


rule index:
    input:
        demo_input,
    output:
        train=DATA.manifest("train"),
        val=DATA.manifest("val"),
        classes=DATA.classes,
        summary=DATA.index_summary,
    log:
        LOGS / "index.log",
    benchmark:
        LOGS / "index.benchmark.tsv"
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
        fingerprint=fingerprint("index"),
    shell:
        "python -m pipeline index --config {params.config} > {log} 2>&1"


rule shard:
    input:
        manifest=DATA.manifest("{split}"),
        classes=DATA.classes,
    output:
        shard=shard_path(".arrow"),
        stats=shard_path(".json"),
    log:
        LOGS / "shard" / f"{SHARD_STEM}.log",
    benchmark:
        LOGS / "shard" / f"{SHARD_STEM}.benchmark.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        config=CONFIG_FILE,
        fingerprint=fingerprint("shard"),
        index=lambda wildcards: int(wildcards.index),
    shell:
        "python -m pipeline shard --config {params.config}"
        " --split {wildcards.split} --shard {params.index} > {log} 2>&1"


rule shard_index:
    input:
        stats=all_shard_files(".json"),
        manifests=[DATA.manifest(split) for split in SPLITS],
    output:
        train=DATA.shard_index("train"),
        val=DATA.shard_index("val"),
        quarantine=DATA.quarantine,
    log:
        LOGS / "shard_index.log",
    benchmark:
        LOGS / "shard_index.benchmark.tsv"
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline shard-index --config {params.config} > {log} 2>&1"


rule verify:
    input:
        indexes=[DATA.shard_index(split) for split in SPLITS],
        shards=all_shard_files(".arrow"),
    output:
        verified=DATA.verified,
    log:
        LOGS / "verify.log",
    benchmark:
        LOGS / "verify.benchmark.tsv"
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline verify --config {params.config} > {log} 2>&1"
