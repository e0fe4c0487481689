"""References inside workflow specs (`$input.query`, `$embed[*].embedding`, `$item`) and the
type algebra used to check them against task contracts at load time."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from inspect import isclass
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel

INPUT_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list[str]": list[str],
    "list[float]": list[float],
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_INPUT_RE = re.compile(rf"^\$input\.({_IDENT})$")
_ITEM_RE = re.compile(rf"^\$item(?:\.({_IDENT}))?$")
_STEP_RE = re.compile(rf"^\$({_IDENT})(\[\*\])?(?:\.({_IDENT}))?$")
RESERVED = frozenset({"input", "item"})


@dataclass(frozen=True)
class Ref:
    """A parsed reference: to a request field, an upstream step's output, or the for_each item."""

    raw: str
    kind: Literal["input", "step", "item"]
    name: str | None = None  # the request field (input) or the step id (step)
    field: str | None = None  # the output field (step) or the item's field (item)
    star: bool = False  # `$step[*]...`: one value per for_each instance


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$")


def parse_ref(raw: str) -> Ref:
    """Parse `raw`; ValueError says which forms are allowed."""
    if m := _INPUT_RE.match(raw):
        return Ref(raw, "input", name=m.group(1))
    if m := _ITEM_RE.match(raw):
        return Ref(raw, "item", field=m.group(1))
    m = _STEP_RE.match(raw)
    if m and m.group(1) not in RESERVED:
        return Ref(raw, "step", name=m.group(1), star=bool(m.group(2)), field=m.group(3))
    raise ValueError(f"bad reference {raw!r}; use $input.FIELD, $STEP.FIELD, $STEP[*].FIELD, $STEP or $item")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def non_none(tp: Any) -> list[Any]:
    """The members of a union other than None (or `[tp]`)."""
    if _is_union(tp):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def list_item(tp: Any) -> Any | None:
    """X for list[X] (also list[X] | None); None when `tp` is not a list."""
    members = non_none(tp)
    if len(members) == 1 and typing.get_origin(members[0]) is list:
        return typing.get_args(members[0])[0]
    return None


def accepts(target: Any, src: Any) -> bool:
    """Would a value of type `src` validate as `target`? (Optional[X] accepts X, float accepts int.)"""
    if target is Any or src is Any:
        return True
    if _is_union(src):
        return all(accepts(target, s) for s in non_none(src))
    if _is_union(target):
        return any(accepts(t, src) for t in non_none(target))
    if typing.get_origin(target) is typing.Annotated:
        return accepts(typing.get_args(target)[0], src)
    if target is src:
        return True
    if target is float and src is int:
        return True
    t_origin, s_origin = typing.get_origin(target), typing.get_origin(src)
    if t_origin is not None and t_origin is s_origin and t_origin in (list, dict):
        t_args, s_args = typing.get_args(target), typing.get_args(src)
        return len(t_args) == len(s_args) and all(accepts(t, s) for t, s in zip(t_args, s_args))
    if isclass(target) and isclass(src) and issubclass(src, BaseModel):
        return issubclass(src, target)
    return False


def type_name(tp: Any) -> str:
    """`list[float] | None`, `RankedDocument`, ... as a reader would write it."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    origin = typing.get_origin(tp)
    if origin is not None:
        return (
            f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
        )
    return getattr(tp, "__name__", str(tp))


# Constraints carried over from task fields to request fields, tightest wins.
_LOWER = (at.MinLen, at.Ge, at.Gt)
_UPPER = (at.MaxLen, at.Le, at.Lt)


def merge_constraints(metadata: list[Any]) -> list[Any]:
    """Keep the tightest of each length/bound constraint; other metadata is dropped."""
    best: dict[type, Any] = {}
    for m in metadata:
        kind = type(m)
        if kind not in _LOWER + _UPPER:
            continue
        value = _bound(m)
        if (
            kind not in best
            or (kind in _LOWER and value > _bound(best[kind]))
            or (kind in _UPPER and value < _bound(best[kind]))
        ):
            best[kind] = m
    return list(best.values())


def _bound(m: Any) -> Any:
    for attr in ("min_length", "max_length", "ge", "gt", "le", "lt"):
        if hasattr(m, attr):
            return getattr(m, attr)
    raise TypeError(m)  # pragma: no cover - only called on the kinds above
