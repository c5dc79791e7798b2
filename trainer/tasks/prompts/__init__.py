"""The ``prompts`` task: GRPO on any ``datasets`` dataset with a prompt column, scored by
reward functions given by import path (TRL's signature), so users bring their own data and
rewards without writing a task (docs/tasks.md).

- ``config.py``: its config sections and their checks, and its registration (light);
- ``rewards.py``: loading and calling the reward functions;
- ``task.py``: the data's splits, scoring, evaluation and its report;
- ``arithmetic.py``: the shipped example (generated problems, exact-answer rewards).
"""
