"""The stock task: market data to prompts, answers to rewards (entry point: ``task.py``).

Behind :class:`trainer.tasks.base.Task`; nothing in the GRPO machinery imports from here.
"""
