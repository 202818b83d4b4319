"""The base of every error the pipeline reports to a person instead of as a traceback."""


class PipelineError(Exception):
    """A problem with the user's config, data or outputs; the message says what and where."""
