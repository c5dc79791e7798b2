"""Entry points and everything around a run: the ``stonk`` CLI (cli.py) and, one subpackage per
concern, run/ (placement, orchestration, Stage II preparation, the demo), slurm/, planning/
(memory plan, preflight), install/ (setup profiles, GPU wheels), offline/ (eval, predict,
serve, export) and embedded/ (the shipped model); accelerate/ holds accelerate's configs."""
