// Package ca implements `meshca ca`: offline generation, phase bundles,
// inspection and verification of Istio CA material. It parses flags and
// prints; the work is done by internal/pki and internal/bundle.
package ca

import (
	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
)

// NewCmd returns `meshca ca` and its subcommands.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Generate, bundle, inspect and verify CA material offline (no openssl needed)",
		Long: `Work with Istio CA material on disk, compatible with the tools/certs Makefile
layout: a root directory (root-cert.pem, root-key.pem) and one directory per
cluster (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).`,
	}
	cmd.AddCommand(newRootCmd(env), newIntermediateCmd(env), newBundleCmd(env), newInspectCmd(env), newVerifyCmd(env))
	return cmd
}
