"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem with the input (config, paths, data) that the message tells how to fix."""


class NonFiniteLossError(UserError):
    """A task's loss became NaN or infinite during training."""


class OutputWriteError(UserError):
    """A checkpoint or result file could not be written (disk full, no permission, ...)."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The error's message as one line, to quote inside another message.

    Args:
        error: any exception; its message may span several lines or be empty.
        limit: the most characters returned.

    Returns:
        The first non-empty line of `str(error)`, stripped, or the exception's class name
        when the message is empty (an empty quote would tell the reader nothing); at most
        `limit` characters.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__[:limit]
