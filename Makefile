# The two commands of the README, and their helpers.
.PHONY: demo demo-stop test install crds lint

install:
	tools/install.sh

demo: install
	.venv/bin/maculaos dev up

demo-stop:
	@if [ -x .venv/bin/maculaos ]; then .venv/bin/maculaos dev down; fi

test: install
	.venv/bin/python -m pytest

crds:
	.venv/bin/maculaos crds generate

lint:
	.venv/bin/mypy
	.venv/bin/lint-imports
