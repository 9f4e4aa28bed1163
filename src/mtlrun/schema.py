"""Structured-config schemas made from the signatures of the classes configs name.

Every config node with a `_target_` is checked against a dataclass built from its target's
parameters and their type hints, through OmegaConf's structured configs: an unknown key or a
value of the wrong type is rejected with the key's full path before anything is built. The
classes are the single source of truth, so a new dataset, task or optimizer is checked
without a schema written by hand.
"""

import dataclasses
import inspect
import types
import typing
from functools import cache
from typing import Any, Union

from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from mtlrun.errors import UserError, first_line

_PLAIN = (int, float, bool, str)


def check(path: str, node: DictConfig, runtime: frozenset[str] = frozenset()) -> None:
    """Check the plain parameters of the `_target_` node at `path`.

    Args:
        path: where the node sits in the config ("optimizer", "tasks.seg"), for messages.
        node: the config node.
        runtime: parameters given at the call, not by the config (e.g. `params`).
    """
    target = node.get("_target_")
    if target is None:
        return
    try:
        schema = schema_of(str(target), runtime)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{path}._target_: cannot import '{target}' ({error})") from error
    if schema is None:  # the target takes **kwargs: any key may be meant for it
        return
    values = {key: value for key, value in node.items() if not str(key).startswith("_")}
    try:
        OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(values))
    except OmegaConfBaseException as error:
        key = f"{path}.{error.full_key}" if getattr(error, "full_key", None) else path
        reason = first_line(error)
        accepted = ", ".join(field.name for field in dataclasses.fields(schema))
        raise UserError(f"{key}: {reason}; '{path}' accepts: {accepted}") from error


@cache
def schema_of(target: str, runtime: frozenset[str]) -> type | None:
    """A dataclass of the target's configurable parameters (None if it takes **kwargs)."""
    made = get_object(target)
    function = made.__init__ if inspect.isclass(made) else made
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: check the keys, not the types
        hints = {}
    fields = []
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            return None
        if name in runtime:
            continue
        default = MISSING if parameter.default is parameter.empty else parameter.default
        kind = _omegaconf_type(hints.get(name, Any))
        if not _fits(default, kind):
            kind = Any
        fields.append((name, kind, dataclasses.field(default=_frozen(default))))
    return dataclasses.make_dataclass(f"{made.__name__}Schema", fields)


def _omegaconf_type(hint: Any) -> Any:
    """The nearest type OmegaConf can validate: plain types, Optional of them, lists and
    dicts of plain types; anything else is not checked (Any)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint in _PLAIN:
        return hint
    if origin in (Union, types.UnionType):
        members = [member for member in arguments if member is not type(None)]
        plain = [member for member in members if member in _PLAIN]
        candidates = {_omegaconf_type(member) for member in members}
        if len(candidates) == 1:  # one type, or the same list written as list | tuple
            (chosen,) = candidates
        elif len(plain) == 1 and all(member is Tensor for member in members if member not in plain):
            chosen = plain[0]  # `float | Tensor` (torch's learning rates): a float in a config
        else:
            return Any
        if chosen is Any:
            return Any
        return typing.Optional[chosen] if type(None) in arguments else chosen  # noqa: UP045
    if origin in (list, tuple) and arguments:
        element = _omegaconf_type(arguments[0])
        rest = [argument for argument in arguments[1:] if argument is not Ellipsis]
        uniform = origin is list or all(argument == arguments[0] for argument in rest)
        return types.GenericAlias(list, (element,)) if uniform and element in _PLAIN else list[Any]
    if origin is dict and len(arguments) == 2 and arguments[0] is str:
        value = _omegaconf_type(arguments[1])
        return types.GenericAlias(dict, (str, value)) if value in _PLAIN else dict[str, Any]
    return Any


def _fits(default: Any, kind: Any) -> bool:
    """Whether a default value is valid for the chosen type (else the type is not kept)."""
    if default is MISSING or kind is Any:
        return True
    try:
        probe = [("value", kind, dataclasses.field(default=MISSING))]
        OmegaConf.structured(dataclasses.make_dataclass("Probe", probe)).value = default
    except (OmegaConfBaseException, ValueError, TypeError):
        return default is None and "None" in str(kind)
    return True


def _frozen(default: Any) -> Any:
    """Dataclass defaults must be immutable: lists become tuples (OmegaConf lists again)."""
    if isinstance(default, list):
        return tuple(default)
    if isinstance(default, dict):
        return MISSING
    return default
