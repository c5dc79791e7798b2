"""The GRPO recipe of one learner rank, as named phases; ``trainer/train.py`` builds its parts.

A step is, top to bottom (:meth:`GRPORecipe.train_step`), each phase timed into the step's
``time/<name>`` metric:

- ``rollout`` (``time/generate``): G completions per prompt from the rollout source under
  the adapter it serves now; with ``rollout.overlap``, the batch sampled while the previous
  step trained (``time/rollout_wait``: the part of that sampling the learner waited for).
- ``score`` (``time/reward``): rewards, the task's diagnostics, the rollouts record.
- ``learn`` (``time/learner``): one optimizer step (``trainer/learner.py``, the objective in
  ``trainer/objective.py``).
- ``publish`` (``time/sync``): rank 0 stores adapter v(step) and the source serves it before
  any rank samples again.
- ``evaluate`` (``time/eval``, rank 0, every ``eval.every_steps``): the fixed eval subset
  and the best adapter kept.
- ``checkpoint`` (every ``run.checkpoint_every``, collective; its seconds in the console
  line that names it).

The rollout side is a :class:`rollout.source.RolloutSource`: the vLLM workers
(``RolloutClient``) in a run, a recorded run (``RecordedRollouts``) in the unit test that
pins two steps' loss and KL (tests/trainer/test_recipe.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from common.files import atomic_write_text, read_json
from rollout.adapter_store import AdapterStore
from rollout.source import RolloutSource
from trainer import checkpoint, trackers
from trainer.config import ConfigError
from trainer.dist import mean_across_ranks, rank_and_world
from trainer.evaluate import (
    eval_samples,
    final_evaluation,
    keep_best,
    run_eval,
    scalar_metrics,
)
from trainer.metrics import MetricsWriter, PhaseTimer, Progress, gpu_memory
from trainer.objective import active_markers, active_terms
from trainer.parity import ParityAlarm, ParityError
from trainer.rollouts import (
    Background,
    PromptSampler,
    StepRollout,
    build_batch,
    informative_groups,
    sample_groups,
    write_rollouts,
)
from trainer.run_folder import RunFolder


class TimeLimitStop(RuntimeError):
    """SIGUSR1 arrived: the run stopped after a step, with that step's checkpoint."""


def request_seed(seed: int, step: int, rank: int, round_: int) -> int:
    """The sampling seed of one (step, rank, dynamic-sampling round): a function of these
    only, so a resumed run or a request retried on another worker samples the same
    completions. Distinct primes keep nearby (step, rank, round) triples apart."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + round_ * 15_485_863) % 2**31


class GRPORecipe:
    """One rank's training: :meth:`start` (a fresh adapter v0, or a checkpoint), then
    :meth:`run` steps until ``train.steps``, then :meth:`finish` (rank 0: final evaluation,
    gate, report). ``stop_requested``: set by SIGUSR1, the run stops after the step."""

    def __init__(self, cfg, run_dir: Path, *, accelerator, task, learner,
                 source: RolloutSource, store: AdapterStore,
                 stop_requested: threading.Event | None = None):
        self.cfg, self.tc, self.rc = cfg, cfg.train, cfg.rollout
        self.run_dir, self.folder = Path(run_dir), RunFolder(run_dir)
        self.acc, self.task, self.learner = accelerator, task, learner
        self.source, self.store = source, store
        self.stop_requested = stop_requested or threading.Event()
        self.rank, self.world = rank_and_world()
        self.tag = f"[stage{cfg.stage}]"
        train = task.split("train")
        if len(train) < self.world:
            raise ConfigError(
                f"data: the training split has {len(train)} prompt(s), fewer than the "
                f"{self.world} learner ranks, and each rank draws from its own share; use more "
                f"data or fewer ranks (launch.num_processes)")
        self.sampler = PromptSampler(train[self.rank::self.world],
                                     seed=self.tc.seed + self.rank, key=task.stratum)
        self.watch = eval_samples(task, cfg, cfg.eval.split, cfg.eval.num_samples)
        self.parity = ParityAlarm(self.rc.max_logp_gap, self.rc.logp_gap_steps)
        self.metrics: MetricsWriter | None = None
        self.progress: Progress | None = None
        # rollout.overlap: the next step's sampling, running while this step trains, and
        # its result once collected (None at the start, after a resume, without overlap)
        self._next: Background | None = None
        self._ready: tuple[StepRollout, float] | None = None

    # ------------------------------------------------------------------ start and loop
    def record_data(self) -> dict:
        """Rank 0: the task's facts about the run's data, kept as ``data.json`` (what
        ``stonk predict`` reads a stated confidence against); returned for the log line."""
        facts = self.task.describe()
        atomic_write_text(self.folder.data_facts, json.dumps(facts, indent=2, default=str))
        return facts

    def start(self, resume: bool) -> int:
        """The step to continue after: 0 with a fresh adapter v0 published, or a
        checkpoint's step with the source serving its adapter before anything is sampled."""
        # started while the workers load (launch.run.runner). Each rank polls for itself: a
        # barrier would wait under the process group's timeout, which can be shorter than
        # rollout.startup_timeout_s
        self.source.wait_ready(self.rc.startup_timeout_s)
        start = 0
        if resume:
            ckpt, _ = checkpoint.resume_point(self.run_dir, self.cfg, self.world)
            start = checkpoint.load(ckpt, self.cfg, learner=self.learner,
                                    sampler=self.sampler, rank=self.rank)["step"]
            checkpoint.rollback(self.run_dir, ckpt, start, self.rank, self.store)
            self.acc.wait_for_everyone()
            self.source.sync(start, self.store.path(start))
            if self.rank == 0:
                print(f"{self.tag} resumed from {ckpt} at step {start}; the workers serve its "
                      f"adapter as v{start}", flush=True)
        else:
            self.publish(0)  # the fresh adapter (identical to the base) is the policy
        self.metrics = MetricsWriter(self.folder.metrics) if self.rank == 0 else None
        self.progress = Progress(self.tc.steps, start_step=start)
        return start

    def run(self, start: int) -> None:
        for step in range(start + 1, self.tc.steps + 1):
            self.train_step(step)
        if self.rank == 0:
            self.metrics.close()

    def train_step(self, step: int) -> None:
        timer = PhaseTimer()
        got = self.rollout(step, timer)
        position = self.sampler.snapshot()  # what this step's checkpoint records
        if self.rc.overlap and step < self.tc.steps:  # step + 1, sampled under v(step - 1)
            upcoming = self.sampler.next(self.tc.prompts_per_rank)  # extra draws: in there
            self._next = Background(lambda: self.sample(step + 1, upcoming))
        with timer("reward"):
            local = self.score(step, got)
        with timer("learner"):
            local.update(self.learn(step, got))
        if self._next is not None:
            with timer("rollout_wait"):
                self._ready = (self._next.result(), self._next.seconds)
                self._next = None
        with timer("sync"):
            self.publish(step)
        record, stop_now, mismatch = self.gather(step, local, timer, got)
        if self.rank == 0:
            if (self.cfg.eval.every_steps and step % self.cfg.eval.every_steps == 0
                    and not mismatch and not stop_now):
                self.evaluate(step, record)
            self.log(step, record)
        if mismatch:
            raise mismatch if self.rank == 0 else ParityError("see rank 0")
        if step % self.cfg.run.checkpoint_every == 0 or step == self.tc.steps or stop_now:
            self.checkpoint(step, position)
        self.acc.wait_for_everyone()
        if stop_now:
            raise TimeLimitStop("see rank 0") if self.rank else TimeLimitStop(
                f"SIGUSR1 (Slurm's time-limit warning): stopped after step {step} with its "
                f"checkpoint; the requeued job continues from it (or: make "
                f"stage{self.cfg.stage} RESUME={self.run_dir})")

    # ------------------------------------------------------------------ phases
    def rollout(self, step: int, timer: PhaseTimer) -> StepRollout:
        """This step's scored groups: sampled now, or while the last step trained."""
        if self._ready is not None:
            got, timer.seconds["generate"] = self._ready
            self._ready = None
            return got
        with timer("generate"):
            return self.sample(step, self.sampler.next(self.tc.prompts_per_rank))

    def sample(self, step: int, samples: list) -> StepRollout:
        """Sample and score step ``step``'s groups under the adapter the source serves now
        (with rollout.dynamic_sampling, drawing more prompts for groups without a gradient)."""
        rc, cfg = self.rc, self.cfg

        def draw(chosen: list, round_: int):
            seed = request_seed(self.tc.seed, step, self.rank, round_) \
                if rc.seed_requests else None
            return sample_groups(self.task, chosen, self.source, self.learner.tokenizer,
                                 group_size=rc.group_size, max_tokens=rc.max_tokens,
                                 temperature=rc.temperature, top_p=rc.top_p, seed=seed,
                                 overlong_buffer=cfg.reward.overlong_buffer,
                                 overlong_coef=cfg.reward.overlong_coef)

        stats = {}
        if rc.dynamic_sampling:
            samples, drawn, stats = informative_groups(samples, draw, self.sampler.next,
                                                       rc.max_extra_draws)
        else:
            drawn = draw(samples, 0)
        batch = build_batch(self.task, self.learner.tokenizer, drawn,
                            group_size=rc.group_size, advantage=self.tc.advantage,
                            pad_id=self.learner.pad_id,
                            markers=active_markers(self.tc), credit=self.tc.credit,
                            credit_options=self.tc.credit_options,
                            credit_modal=self.tc.credit_modal, samples=samples)
        return StepRollout(samples, batch, drawn[2], drawn[1], stats)

    def score(self, step: int, got: StepRollout) -> dict[str, float]:
        """This rank's reward and task metrics of the step; the rollouts record."""
        batch, groups, components = got.batch, got.groups, got.components
        local = {"reward/mean": float(batch.rewards.mean()),
                 "reward/std": float(batch.rewards.std()),
                 "completion_tokens": float(batch.completion_mask.sum(1).mean()),
                 "truncated_frac": sum(c.finish_reason == "length" for g in groups
                                       for c in g) / len(batch)}
        for name in components[0]:
            local[f"reward/{name}"] = sum(c[name] for c in components) / len(components)
        # counts: this rank's times the world size, so the mean across ranks is the sum
        local.update({k: v * self.world for k, v in got.stats.items()})
        diags = [self.task.diagnostics(s, c.text)
                 for s, g in zip(got.samples, groups, strict=True) for c in g]
        local.update({f"task/{k}": v for k, v in self.task.aggregate(diags).items()})
        every = self.cfg.run.log_rollouts_every
        if every and step % every == 0:
            write_rollouts(self.folder.rollouts(self.rank), step, got.samples, batch, groups,
                           components)
        return local

    def learn(self, step: int, got: StepRollout) -> dict[str, float]:
        """One optimizer step on the batch (and the side batches the objective's enabled
        terms build, e.g. the anchor's reference answers)."""
        tc, batch = self.tc, got.batch
        side = {}
        for term in active_terms(tc):
            if term.side is not None:
                # its random choices depend only on (seed, rank, step): resumable
                side[term.name] = term.side(
                    self.task, got.samples, batch.prompt_ids[::batch.group_size],
                    self.learner.tokenizer, self.learner.pad_id,
                    random.Random(f"{term.name}:{tc.seed}:{self.rank}:{step}"))
        out = {"lr": self.learner.set_step(step)}
        out.update(self.learner.train_step(batch, side))
        return out

    def publish(self, version: int) -> None:
        """Rank 0 stores v(version) and loads it on the source; then every rank makes sure
        every live worker serves it (also one back from a restart) before sampling."""
        state = self.learner.adapter_state()  # collective under ZeRO-3
        # every rank's sampling is over before the served adapter changes (with
        # rollout.overlap a rank may still be sampling when rank 0 is done training)
        self.acc.wait_for_everyone()
        if self.rank == 0:
            self.store.publish(version, lambda d: self.learner.save_adapter(d, state))
            self.source.sync(version, self.store.path(version))
            self.store.prune(self.cfg.run.keep_adapter_versions, version)
        self.acc.wait_for_everyone()
        self.source.sync(version, self.store.path(version))

    def gather(self, step: int, local: dict[str, float], timer: PhaseTimer,
               got: StepRollout) -> tuple[dict[str, float], bool, ParityError | None]:
        """The step's record (the mean over ranks), whether to stop after it (any rank was
        warned) and the parity alarm (the same on every rank: all stop together)."""
        local.update(timer.as_metrics())
        local.update(gpu_memory(self.learner.device))  # the mean of each rank's peak
        # faults/*: this rank's counts times the world size, so the mean is the sum
        local.update({f"faults/{k}": float(v * self.world)
                      for k, v in self.source.take_faults().items()})
        local["stop_requested"] = float(self.stop_requested.is_set())
        record = mean_across_ranks(local, self.learner.device)
        stop_now = record.pop("stop_requested") > 0 and step < self.tc.steps
        mismatch = self.parity.update(step, record["logp_gap"])
        if self.rank == 0:
            record.update(step=step, adapter_version=step,
                          sampled_with_version=int(got.batch.adapter_version.max()),
                          **supervisor_counts(self.folder.worker_status))
        return record, stop_now, mismatch

    def evaluate(self, step: int, record: dict[str, float]) -> None:
        """Rank 0: the fixed eval subset under v(step); ``best/`` when it is the best yet."""
        t0 = time.perf_counter()
        ev = run_eval(self.task, self.watch, self.source, self.learner.tokenizer,
                      self.cfg)["metrics"]
        record.update(scalar_metrics(ev, "eval/"))
        record["time/eval"] = round(time.perf_counter() - t0, 4)
        value = ev.get(self.cfg.eval.best_metric)
        if isinstance(value, (int, float)) and self.keep_best(step, float(value)):
            record["eval/new_best"] = 1.0

    def keep_best(self, step: int, value: float) -> bool:
        try:
            return keep_best(self.run_dir, self.store.path(step), step, value,
                             self.cfg.eval.best_metric)
        except OSError as exc:
            raise checkpoint.CheckpointError(checkpoint.failure_message(
                self.cfg, self.run_dir, step, self.folder.best, str(exc))) from None

    def log(self, step: int, record: dict[str, float]) -> None:
        self.metrics.write(record)
        trackers.log(self.acc, record, step)
        print(self.progress.line(step, record), flush=True)
        if step == 1:
            print(base_gap_line(self.cfg, record["logp_gap"]), flush=True)

    def checkpoint(self, step: int, position: PromptSampler) -> None:
        """Collective: every rank writes its part of the optimizer state."""
        t0 = time.perf_counter()
        path = checkpoint.save(self.cfg, self.run_dir, step, learner=self.learner,
                               sampler=position, adapter_dir=self.store.path(step),
                               rank=self.rank, world=self.world)
        if self.rank == 0:
            print(f"{self.tag} checkpoint {path.name} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Rank 0: which adapter each worker served last, then the final evaluation."""
        served = {url: self.source.served_adapter_path(url) for url in self.source.live()}
        self.folder.served_adapters.write_text(json.dumps(served, indent=2))
        print(f"{self.tag} done: {self.tc.steps} steps; final evaluation", flush=True)
        final_evaluation(self.cfg, self.task, self.source, self.learner.tokenizer,
                         self.run_dir, self.tag)


def base_gap_line(cfg, gap: float) -> str:
    """Step 1 samples under v0, whose LoRA is still zero: the learner/worker log-prob gap is
    then the gap between the two bases (a 4-bit base quantizes what the workers serve in
    full precision), which the importance weight (train.is_cap) corrects for all run long."""
    base = "nf4 4-bit" if cfg.model.load_in_4bit else cfg.model.dtype
    return (f"[stage{cfg.stage}] step 1: learner ({base} base) vs workers ({cfg.rollout.dtype}) "
            f"log-prob gap {gap:.2e} per token, the adapter still zero (logp_gap)")


def supervisor_counts(status: Path) -> dict[str, float]:
    """Cumulative worker faults the launcher's supervisor saw (died, hung, restarted, ...)."""
    counts = read_json(status).get("counts", {})
    return {f"faults/workers_{k}": float(v) for k, v in counts.items()}
