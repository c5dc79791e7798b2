"""Running a stage on this node: where each process goes (plan), the run folder, the vLLM
workers and the ``accelerate launch`` learner tree with their teardown (runner), the learner's
launcher that keeps a clean stop clean (learner_launch), the workers' CPU cores (cpu_cores),
Stage II's preparation (stage2) and ``make demo`` (demo)."""
