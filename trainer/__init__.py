"""Learner side of Stonk-Trainer: config, GRPO math, the learner loop, metrics, tasks."""
