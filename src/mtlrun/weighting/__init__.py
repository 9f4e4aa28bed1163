"""Loss weighting: how per-task losses become one parameter update."""

from mtlrun.weighting.base import StepContext, Weighting

__all__ = ["StepContext", "Weighting"]
