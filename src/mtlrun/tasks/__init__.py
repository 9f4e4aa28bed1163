"""Task types: each file holds one, with its head, loss, metrics and pictures."""

from mtlrun.tasks.base import Direction, Task

__all__ = ["Direction", "Task"]
