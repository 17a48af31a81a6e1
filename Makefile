# Two entry points for users: `make demo` and `make test` (see README). Both build .venv/ first.
# uv is bootstrapped from PyPI with pip when it is not on PATH; it ignores pip's config, so the
# locked torch/torchvision pair is installed whatever local wheels the machine's pip points at.
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
PYTEST_ARGS ?=

.PHONY: install spyx demo test test-fast lint typecheck bench clean

install: .venv/.synced spyx

# Spyx (JAX, numpy >= 2) cannot share .venv/ with Lava (numpy < 2): its own locked environment,
# run by `validate --runtime spyx` in a subprocess (docs/interop.md).
spyx: .venv-spyx/.synced

.tools/bin/uv:
	PIP_CONFIG_FILE=/dev/null python3 -m pip install --quiet --disable-pip-version-check --target .tools/lib uv
	mkdir -p .tools/bin && ln -sf ../lib/bin/uv .tools/bin/uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python 3.11
	touch $@

.venv-spyx/.synced: envs/spyx/pyproject.toml envs/spyx/uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.venv-spyx $(UV) sync --locked --python 3.11 --project envs/spyx
	touch $@

demo: install
	.venv/bin/lasnn-deploy demo

test: install
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: install
	.venv/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff and mypy, configured in pyproject.toml; .ci/run runs them before the tests.
lint: install typecheck
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# mypy over the package as installed (lasnn_deploy, exporters/, hw_targets/): .ci/typecheck.
typecheck: install
	.ci/typecheck

bench: install
	.venv/bin/python bench/train_throughput.py

clean:
	rm -rf .venv .venv-spyx .tools runs .mypy_cache
