"""Slurm host lists (``SLURM_JOB_NODELIST``) as node names, in Slurm's order.

``scontrol show hostnames`` is Slurm's own expansion and is used where it exists (inside a
job it always does). Elsewhere (tests, a job environment replayed by hand) :func:`parse`
reads every form Slurm writes: comma lists, bracket groups of ranges and single numbers,
zero padding (``gpu[008-010]``), text after a bracket (``n[1-2]-ib``) and several bracket
groups in one name (``rack[1-2]n[01-02]``: every combination, the leftmost group slowest,
as ``scontrol`` expands them). Anything else is a :class:`HostListError` naming the list
and the position, never a silently wrong node list.
"""

from __future__ import annotations

import re
import shutil
import subprocess

RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class HostListError(ValueError):
    """A host list this module cannot read."""


def _items(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise HostListError(f"host list {text!r}: nested '[' at position {i}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostListError(f"host list {text!r}: ']' without '[' at position {i}")
            depth = 0
        elif ch == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise HostListError(f"host list {text!r}: '[' is never closed")
    items.append(text[start:])
    return items


def _numbers(group: str, text: str) -> list[str]:
    """``01-03,7`` -> 01 02 03 7: each range zero-padded to its lower bound's width."""
    out = []
    for part in group.split(","):
        m = RANGE.match(part)
        if not m:
            raise HostListError(f"host list {text!r}: {part!r} in [{group}] is not a number "
                                f"or a range lo-hi")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise HostListError(f"host list {text!r}: range {part!r} runs backwards")
        out += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
    return out


def _expand(item: str, text: str) -> list[str]:
    names = [""]
    for m in re.finditer(r"([^\[]*)(?:\[([^\]]*)\])?", item):
        literal, group = m.group(1), m.group(2)
        choices = [""] if group is None else _numbers(group, text)
        names = [n + literal + c for n in names for c in choices]
    return names


def parse(text: str) -> list[str]:
    """Expand a Slurm host list without Slurm: ``gpu[01-02],login1`` -> gpu01 gpu02 login1."""
    text = text.strip()
    hosts = []
    for item in _items(text):
        if not item or item.startswith("["):
            raise HostListError(f"host list {text!r}: an empty host name")
        hosts += _expand(item, text)
    return hosts


def hostnames(text: str) -> list[str]:
    """The node names of a host list: ``scontrol show hostnames`` where Slurm is installed,
    else :func:`parse`."""
    if shutil.which("scontrol"):
        proc = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise HostListError(f"scontrol show hostnames {text!r} failed: "
                                f"{(proc.stderr or proc.stdout).strip()[:300]}")
        return proc.stdout.split()
    return parse(text)
