package sandbox

import (
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

func TestExpiringCALivesTheLifetimeAsked(t *testing.T) {
	now := time.Now()
	for name, expireRoot := range map[string]bool{"the intermediate expires": false, "the root expires (and its intermediate with it)": true} {
		t.Run(name, func(t *testing.T) {
			o := &Options{Dir: t.TempDir(), KeyType: pki.ECDSAP256, CA: CAExpiring, CALifetime: 2 * time.Minute, ExpireRoot: expireRoot}
			bundles, err := generateExpiringCA(o, []string{""}, now)
			if err != nil {
				t.Fatal(err)
			}
			p, err := bundles[""].Parse()
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Signer.NotAfter.Sub(now); got < time.Minute || got > 2*time.Minute {
				t.Errorf("intermediate lives %s, want 2m", got)
			}
			rootLife := p.Roots[0].NotAfter.Sub(now)
			if expireRoot != (rootLife <= 2*time.Minute) {
				t.Errorf("root lives %s with ExpireRoot %v", rootLife, expireRoot)
			}
		})
	}
}

func TestCAModeOptions(t *testing.T) {
	tests := map[string]struct {
		opts    Options
		wantErr string
	}{
		"default is the plug-in CA":               {opts: Options{}},
		"self-signed":                             {opts: Options{CA: CASelfSigned}},
		"expiring gets the default lifetime":      {opts: Options{CA: CAExpiring}},
		"an unknown mode":                         {opts: Options{CA: "vault"}, wantErr: `--ca "vault"`},
		"a lifetime without the expiring mode":    {opts: Options{CALifetime: time.Minute}, wantErr: "apply to --ca expiring only"},
		"a lifetime too short to start a sandbox": {opts: Options{CA: CAExpiring, CALifetime: time.Second}, wantErr: "too short"},
		"expire-root without the expiring mode":   {opts: Options{CA: CASelfSigned, ExpireRoot: true}, wantErr: "apply to --ca expiring only"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.opts.caDefaults()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			case tc.opts.CA == CAExpiring && tc.wantErr == "" && tc.opts.CALifetime != DefaultCALifetime:
				t.Errorf("lifetime %s, want the default %s", tc.opts.CALifetime, DefaultCALifetime)
			}
		})
	}
}
