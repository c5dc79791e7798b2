"""Rollout side: vLLM worker processes, grouped generation, adapter publish/load.

Knows nothing about stocks or rewards.
"""
