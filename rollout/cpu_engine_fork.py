"""A vLLM general plugin: CPU workers fork their engine-core process instead of spawning it.

vLLM's OpenAI server runs the engine in a child process. On GPUs vLLM forks it (its default
while CUDA is not initialised in the server process); its CPU platform forces ``spawn``
(``CpuPlatform.check_and_update_config`` sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``), so
the child imports vLLM, torch and transformers again: ~19 s of a worker's ~41 s start on 2
cores (BENCHMARKS.md section 3), paid at every worker start and restart of every CPU run.
Here, after the platform's own check, the method is set back to ``fork`` when the engine is
one process (tensor parallel 1: no executor workers are started from it). The server has
run no OpenMP region by then (it has only parsed arguments and loaded the config), so the
child builds its own thread pool as a spawned one does; the child then binds its threads as
vLLM-CPU always does.

How it is applied: ``pyproject.toml`` registers :func:`register` under vLLM's
``vllm.general_plugins`` entry point group. It acts only when the environment says
``STONK_CPU_ENGINE_FORK=1`` (the launcher sets it for CPU workers when
``rollout.cpu_engine_fork`` is on, the default), only on vLLM's CPU platform and only on the
vLLM versions it was checked on (:data:`CHECKED`); a plain vLLM is untouched.
"""

from __future__ import annotations

import os
import sys

ENV = "STONK_CPU_ENGINE_FORK"
APPLIED = "stonk: engine core forked, not spawned"  # the worker log's proof
CHECKED = ("0.32.0",)  # vLLM versions whose CPU platform this was checked against
METHOD_VAR = "VLLM_WORKER_MULTIPROC_METHOD"


def register() -> None:
    """vLLM's entry point: wrap the CPU platform's config check where :data:`ENV` asks."""
    if os.environ.get(ENV) != "1":
        return
    import vllm
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or vllm.__version__ not in CHECKED:
        return
    platform = type(current_platform)
    if getattr(platform, "_stonk_engine_fork", False):
        return
    check = platform.check_and_update_config.__func__

    def check_then_fork(cls, vllm_config) -> None:
        check(cls, vllm_config)
        if vllm_config.parallel_config.world_size == 1 and os.environ.get(METHOD_VAR) != "fork":
            os.environ[METHOD_VAR] = "fork"
            print(f"{APPLIED} (vLLM {vllm.__version__}, CPU)", file=sys.stderr, flush=True)

    platform.check_and_update_config = classmethod(check_then_fork)
    platform._stonk_engine_fork = True
