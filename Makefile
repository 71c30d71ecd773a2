# The two commands of the README, and their helpers.
.PHONY: demo demo-stop test test-long install crds lint manifests operator-image

install:
	tools/install.sh

demo: install
	.venv/bin/maculaos dev up

demo-stop:
	@if [ -x .venv/bin/maculaos ]; then .venv/bin/maculaos dev down; fi

# Two lanes at once (tools/test.sh says which tests run in each)
test: install
	tools/test.sh

# Everything `make test` runs, and the VM stories past its time budget (marker `long`)
test-long: install
	tools/test.sh --long

crds:
	.venv/bin/maculaos crds generate

# deploy/kustomize from the charts (after `make crds` or a chart change)
manifests: install
	.venv/bin/maculaos dev manifests

# The operator/agent OCI archive for k3s airgap import (root; see docs/install.md)
operator-image: install
	.venv/bin/python image-build/operator-image/build.py

lint:
	.venv/bin/mypy
	.venv/bin/lint-imports
