//go:build tools

// Package tools pins the Kubernetes commands built by ../install.sh for the control plane the tests and
// the demo run on the host; the node's kubelet and kube-proxy are built from ./node.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
