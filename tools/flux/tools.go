//go:build tools

// Package tools pins Flux's source-controller and kustomize-controller, built by tools/install.sh for the
// GitOps tests (they run as processes against the test control plane).
package tools

import (
	_ "github.com/fluxcd/kustomize-controller"
	_ "github.com/fluxcd/source-controller"
)
