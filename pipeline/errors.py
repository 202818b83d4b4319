"""The base of every error the pipeline reports to a person instead of as a traceback."""


class PipelineError(Exception):
    """A problem with the user's config, data or outputs; the message says what and where."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (at most `limit` characters), or the name of its
    type when the message is empty, for one-line reports of errors from other libraries."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class DataStageError(PipelineError, RuntimeError):
    """A data stage cannot go on; the message says which file and what to do."""


class LayoutError(PipelineError, ValueError):
    """The folder does not look like the layout asked for, or a label file is unusable."""
