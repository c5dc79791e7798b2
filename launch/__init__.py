"""Entry points and launch recipes: the CLI, run orchestration, accelerate configs."""
