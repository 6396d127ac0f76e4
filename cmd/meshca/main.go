// Command meshca rotates the certificate authority of an Istio service mesh
// with zero downtime. See README.md.
package main

import (
	"context"
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
)

func main() {
	ctx, stop := app.NotifyContext(context.Background(), os.Stderr)
	code := app.Main(ctx, os.Args[1:], genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}
