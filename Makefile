# make setup   create .venv, install the project, make sure Fashion-MNIST is present
# make search  setup, then `python -m search +device=rpi4` on the embedded defaults
# make test    setup, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup search test dataset

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
	$(PY) -m pytest -q
