"""A config field's rules beside its default: bounds and resume policy as field metadata.

``sections.py`` declares a constrained or resumable field with :func:`setting`; everything
that applies the rules reads them from here: ``validation.validate`` (:func:`bound_errors`),
the resume check (``resume.py``, :func:`resume_may_change`) and the config reference
(``launch/config_reference.py``, :func:`rule_text`). A field's doc is the comment beside it
in ``sections.py``, which the reference reads too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any


@dataclass(frozen=True)
class Bounds:
    """A number's allowed range: ``ge``/``gt`` below, ``le``/``lt`` above (None: open);
    ``hint``: what a boundary value means, said in the error (e.g. "0: off"). None passes
    (a field typed ``float | None`` keeps its null)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    hint: str = ""

    def holds(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, float) and math.isnan(value):
            return False  # no comparison with NaN is true: it would pass every bound
        return not ((self.ge is not None and value < self.ge)
                    or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le)
                    or (self.lt is not None and value >= self.lt))

    def text(self) -> str:
        """"at least 2", ">= 0", "> 0", "in (0, 1]", ..."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return (f"in {'[' if self.ge is not None else '('}{_num(low)}, {_num(high)}"
                    f"{']' if self.le is not None else ')'}")
        if isinstance(self.ge, int) and self.ge >= 1:
            return f"at least {self.ge}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_num(low)}"
        return f"{'<=' if self.le is not None else '<'} {_num(high)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def setting(default: Any = MISSING, *, factory: Any = MISSING, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            hint: str = "", resumable: bool = False) -> Any:
    """A dataclass field with its rules: bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <;
    ``hint`` joins the error) and ``resumable`` (a resumed run may change it: an operational
    setting that does not change what is computed)."""
    bounds = (Bounds(ge, gt, le, lt, hint)
              if any(b is not None for b in (ge, gt, le, lt)) else None)
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"bounds": bounds, "resumable": resumable})


def bounds_of(f: dataclasses.Field) -> Bounds | None:
    return f.metadata.get("bounds")


def _sections(config) -> list[tuple[str, type]]:
    """(name, class) of each section of a config: its values' classes (a task's own
    sections included)."""
    return [(f.name, type(getattr(config, f.name))) for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))]


def bound_errors(cfg) -> list[str]:
    """'section.field: must be ...' for every field of ``cfg`` outside its bounds."""
    out = []
    for name, _ in _sections(cfg):
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            b = bounds_of(f)
            if b is not None and not b.holds(getattr(section, f.name)):
                extra = f" ({b.hint})" if b.hint else ""
                out.append(f"{name}.{f.name}: must be {b.text()}{extra}")
    return out


def resume_may_change(config) -> tuple[str, ...]:
    """fnmatch patterns of the fields a resumed run of ``config`` (a StageConfig: its task's
    sections decide) may change: every field of a section whose class says ``RESUMABLE =
    True`` (``section.*``), and each ``resumable`` field (``section.field``, and
    ``section.field.*`` for the keys of a mapping)."""
    out: list[str] = []
    for name, cls in _sections(config):
        if getattr(cls, "RESUMABLE", False):
            out.append(f"{name}.*")
            continue
        for f in dataclasses.fields(cls):
            if f.metadata.get("resumable"):
                out += [f"{name}.{f.name}", f"{name}.{f.name}.*"]
    return tuple(out)


def rule_text(cls, f: dataclasses.Field) -> str:
    """The reference's rule column: the bounds and "resumable" where they apply."""
    b = bounds_of(f)
    parts = [b.text() + (f" ({b.hint})" if b.hint else "")] if b else []
    if getattr(cls, "RESUMABLE", False) or f.metadata.get("resumable"):
        parts.append("may change on resume")
    return "; ".join(parts)
