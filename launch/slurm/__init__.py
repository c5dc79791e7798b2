"""Slurm: a job's share on its node across requeues (job), host lists (hostlist), and the
batch files (``*.sbatch``) that run ``stonk slurm`` under ``srun``."""
