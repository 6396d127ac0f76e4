package rotate_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
)

func TestUsageErrorsChangeNothing(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"neither --root nor --ca-dir":             {[]string{"rotate"}, "exactly one of --root DIR or --ca-dir DIR"},
		"both --root and --ca-dir":                {[]string{"rotate", "--root", "a", "--ca-dir", "b"}, "exactly one of"},
		"an unknown phase for --until":            {[]string{"rotate", "--root", "a", "--until", "later"}, "unknown phase"},
		"an unknown strategy":                     {[]string{"rotate", "--root", "a", "--strategy", "yolo"}, "use phased or one-step"},
		"one-step without accepting the downtime": {[]string{"rotate", "--root", "a", "--strategy", "one-step"}, "--i-accept-downtime"},
		"an unknown key type":                     {[]string{"rotate", "--root", "a", "--key-type", "dsa"}, "unknown key type"},
		"status with an unknown output format":    {[]string{"status", "-o", "xml"}, "unknown output format"},
		"an unknown pace":                         {[]string{"rotate", "--root", "a", "--pace", "slow"}, "use fast or gentle"},
		"rotate with an unknown output format":    {[]string{"rotate", "--root", "a", "-o", "xml"}, "unknown output format"},
		"a one-cluster command with two contexts": {[]string{"check", "--context", "a", "--context", "b"}, "give --context once"},
		"recover without --root or --ca-dir":      {[]string{"recover"}, "exactly one of --root DIR or --ca-dir DIR"},
		"recover with a negative --within":        {[]string{"recover", "--root", "a", "--within", "-1h"}, "must not be negative"},
		"recover with an unknown output format":   {[]string{"recover", "--root", "a", "-o", "xml"}, "unknown output format"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
			code := app.Run(context.Background(), append(tc.args, "--kubeconfig", "/nonexistent"), env)
			if code != cli.ExitUsage || !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut.String(), cli.ExitUsage, tc.want)
			}
		})
	}
}

func TestRotateWithoutConfirmationOnAPipeChangesNothing(t *testing.T) {
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader("n\n"), Out: &out, ErrOut: &errOut}, Now: time.Now}
	// The root directory does not exist: the command stops before any
	// cluster access, whatever the answer.
	code := app.Run(context.Background(), []string{"rotate", "--root", t.TempDir(), "--kubeconfig", "/nonexistent"}, env)
	if code != cli.ExitFailure || !strings.Contains(errOut.String(), "root-cert.pem") {
		t.Errorf("exit %d, stderr %q; want a clear error naming root-cert.pem", code, errOut.String())
	}
}
