// Command node is the kubelet and kube-proxy in one binary, as k3s packs them: the two share most of
// their code (client-go, the API types, component-base), so one binary costs the image far less than
// both. It runs the one it is called as (argv[0]: the image links kube-proxy to kubelet).
package main

import (
	"context"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream's mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	var command *cobra.Command
	if filepath.Base(os.Args[0]) == "kube-proxy" {
		command = proxy.NewProxyCommand()
	} else {
		command = kubelet.NewKubeletCommand(context.Background())
	}
	os.Exit(cli.Run(command))
}
