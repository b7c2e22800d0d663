# shipshape: a Cookiecutter template for Python services that deploy with zero downtime.
#   make demo   bake the default service into ./demo and serve it on http://127.0.0.1:8080
#   make test   run the template's whole test suite
.DEFAULT_GOAL := help
PYTHON ?= python3
TOOLS := .tools

.PHONY: help demo test tools system-packages wheelhouse bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: tools ## Bake the default service into ./demo and serve it (installs what it needs)
	scripts/demo

test: tools ## Run the template's whole test suite
	scripts/test

tools: $(TOOLS)/.installed ## Create .tools/ with cookiecutter, pytest and uv

$(TOOLS)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $@

system-packages: ## Install nginx, libpcre2-dev and wrk with apt (as root), or print the command
	scripts/system-packages

wheelhouse: tools ## Build uWSGI once into the machine's wheelhouse (WHEELHOUSE)
	scripts/wheelhouse

bench: tools ## Run the benchmarks in bench/ (results in bench/results/)
	$(TOOLS)/bin/python bench/bake.py

clean: ## Remove the demo, the tools and caches (not the wheelhouse)
	-[ -x demo/my_service/bin/stop ] && demo/my_service/bin/stop
	rm -rf demo $(TOOLS) .pytest_cache
