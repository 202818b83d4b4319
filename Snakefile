# Extremely large minibatch SGD (Akiba et al. 2017) as a pipeline. See README.md.
#
# There is no `configfile:` directive on purpose: Snakemake *merges* --configfile into the
# directive's file, so an experiment would silently inherit the demo's keys. profiles/default
# names config/config.yaml (the demo) instead, and `--configfile FILE` replaces it.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from pipeline.config import ConfigError
from pipeline.config_files import config_from_mapping, resolve
from pipeline.experiments import expand_experiments

min_version("9.0")

if not config:
    raise WorkflowError(
        "no config: pass --configfile config/experiments/<name>.yaml "
        "(profiles/default uses config/config.yaml, the demo)"
    )
# pipeline/config_files.py reads the config first: it fills in the defaults, names a bad key or
# value precisely, and types the strings that `--config 'data={jpeg_quality: 80}'` produces.
# A bad key or sweep point ends here with our message alone: no traceback through the files.
try:
    # the experiments from the config as written, so checks of what it leaves unset apply
    expand_experiments(config_from_mapping(config))  # common.smk expands them again
    config.update(resolve(config))
except ConfigError as err:
    sys.exit(f"{err}")
validate(config, "workflow/schemas/config.schema.json", set_default=False)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
