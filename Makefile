# make setup   create .venv, install the project, make sure Fashion-MNIST is present
# make search  setup, then `python -m search +device=rpi4` on the embedded defaults
# make test    setup, then the lint (ruff), the import layers (lint-imports) and the test suite
# make docs    setup, then the documentation site in site/ (mkdocs build --strict)
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup search test dataset devices docs

setup: $(VENV)/.installed dataset

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

dataset:
	@if [ -f "$(FMNIST)" ]; then \
		echo "Fashion-MNIST: $(dir $(FMNIST))"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: install it with 'apt-get install dataset-fashion-mnist'," \
		     "or put the four .gz files in a folder and pass data.root=FOLDER"; exit 1; \
	fi

search: setup
	$(PY) -m search +device=rpi4

test: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "documentation: site/index.html"

# make devices  refit the shipped device models from their data (the host bundle must have
#               been measured: python scripts/latency_host_benchmark.py)
D := latency_models/data
FIT := $(PY) -m latency_models.fit
devices:
	$(FIT) device=rpi4 fbnet=$(D)/hwnasbench_fbnet_blocks.csv column=raspi4_latency \
		power_w=5.25 power_source='"published Raspberry Pi 4 draw at full CPU load, 5.1-5.4 W (hobbyist measurements)"' \
		out=$(D)/rpi4.json conf=/tmp/edgenas-conf/rpi4.yaml
	$(FIT) device=pixel3 fbnet=$(D)/hwnasbench_fbnet_blocks.csv column=pixel3_latency \
		power_w=3.0 power_source='"assumed draw of a Snapdragon 845 phone running one model on its big cores, about 3 W (not measured)"' \
		out=$(D)/pixel3.json conf=/tmp/edgenas-conf/pixel3.yaml
	$(FIT) device=jetson_tx2 fbnet=$(D)/hwnasbench_fbnet_blocks.csv column=edgegpu_latency \
		energy=edgegpu_energy power_w=6.0 power_source="\"HW-NAS-Bench's measured TX2 energy / latency, about 6 W\"" \
		out=$(D)/jetson_tx2.json conf=/tmp/edgenas-conf/jetson_tx2.yaml
	$(FIT) device=note10 ofa=$(D)/ofa_note10_lut power_w=3.5 \
		power_source='"assumed draw of a phone SoC running one model on its big cores, about 3.5 W (not measured)"' \
		out=$(D)/note10.json conf=/tmp/edgenas-conf/note10.yaml
	$(FIT) device=bitfusion apq=$(D)/apq_bitfusion_lut.json power_w=1 bits=[8,6,4] \
		power_source="\"not used: energy is simulated per op by APQ's table\"" \
		out=$(D)/bitfusion.json conf=/tmp/edgenas-conf/bitfusion.yaml
	$(FIT) device=host bundle=$(D)/host-bundle power_w=15 \
		power_source='"assumed active power of one x86 server core, 15 W (not measured: no RAPL on this machine)"' \
		out=$(D)/host.json conf=/tmp/edgenas-conf/host.yaml
