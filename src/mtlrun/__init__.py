"""mtlrun: a command-line runner for multi-task learning experiments on images."""

__version__ = "0.1.0"
