"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem with the input (config, paths, data) that the message tells how to fix."""


class NonFiniteLossError(UserError):
    """A task's loss became NaN or infinite during training."""


class OutputWriteError(UserError):
    """A checkpoint or result file could not be written (disk full, no permission, ...)."""
