"""The base of every error the pipeline reports to a person instead of as a traceback."""

import errno
import os


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


# What to do about a file-system error, by errno; the rerun finishes because every output is
# written atomically (nothing half-written stays under its final name).
_FILE_FAULT_HINTS = {
    errno.ENOSPC: "the file system is full: free space or set results_dir elsewhere",
    errno.EDQUOT: "your disk quota is used up: free space or ask for a larger quota",
    errno.EFBIG: "the file is over this process's size limit (`ulimit -f`): raise the limit",
    errno.EACCES: "this user may not read or write it: fix the permissions or use another folder",
    errno.EPERM: "this user may not read or write it: fix the permissions or use another folder",
    errno.EROFS: "the file system is read-only: set results_dir to a writable folder",
    errno.ENOENT: "it is missing (moved or deleted while the stage ran, or never made): restore "
    "it or rerun the stage that makes it",
    errno.ESTALE: "the shared file system lost track of it (replaced from another node): check "
    "that no other job writes there",
    errno.EIO: "the disk or network file system failed to read or write: check it",
}


# How a training job marks its one-line file-system error in its log, for the launcher to find
# and report as the stage's one `error:` line.
FILE_FAULT_MARK = "job stopped: "


def file_fault_line(stage: str, err: OSError) -> str:
    """One line for a file-system error: `<stage>: <path>: <reason>. <what to do>, then rerun`."""
    if err.filename is None:  # pyarrow and others put the path in the message, if anywhere
        what = first_line(err)
    else:
        reason = os.strerror(err.errno) if err.errno else first_line(err)
        what = f"{os.fsdecode(err.filename)}: {reason}"
    hint = _FILE_FAULT_HINTS.get(err.errno, "fix the cause")
    return f"{stage}: {what}. {hint[0].upper()}{hint[1:]}, then rerun (finished outputs are kept)"
