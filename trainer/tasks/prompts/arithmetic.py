"""The prompts task's shipped example: verifiable arithmetic.

``python -m trainer.tasks.prompts.arithmetic`` writes ``data/examples/arithmetic.jsonl``
(committed): rows ``{"prompt", "answer"}`` such as "What is 17 + 25? End with the answer as a
number." / 42, drawn from a fixed seed. The two reward functions read the last integer a
completion writes:

- ``exact_answer``: 1 when it is the answer, else 0 (the verifiable reward);
- ``close_answer``: 0.5 x max(0, 1 - |written - answer| / (|answer| + 10)), partial credit
  that gives a small model's groups differing rewards before it is ever exact (shaping, as
  countdown-style GRPO recipes use); 0 when no integer is written.

They have TRL's reward-function signature (``trainer/tasks/prompts/rewards.py``), so the same
functions work in TRL's GRPOTrainer.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

INTEGER = re.compile(r"-?\d+")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def last_integer(text: str) -> int | None:
    found = INTEGER.findall(text)
    return int(found[-1]) if found else None


def _text(completion) -> str:
    """A completion as text: a string, or TRL's conversational [{"role", "content"}]."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def exact_answer(prompts, completions, answer, **kwargs) -> list[float]:
    return [float(last_integer(_text(c)) == int(a)) for c, a in zip(completions, answer,
                                                                     strict=True)]


def close_answer(prompts, completions, answer, **kwargs) -> list[float]:
    out = []
    for c, a in zip(completions, answer, strict=True):
        got = last_integer(_text(c))
        out.append(0.0 if got is None else
                   0.5 * max(0.0, 1.0 - abs(got - int(a)) / (abs(int(a)) + 10)))
    return out


def problems(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        op = rng.choice(sorted(OPS))
        a, b = rng.randint(1, 50), rng.randint(1, 12 if op == "*" else 50)
        rows.append({"prompt": f"What is {a} {op} {b}? End with the answer as a number.",
                     "answer": OPS[op](a, b)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/examples/arithmetic.jsonl")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in problems(a.rows, a.seed)))
    print(f"wrote {a.rows} problems to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
