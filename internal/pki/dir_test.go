package pki_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/pki"
)

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func set(gen string) []pki.File {
	return []pki.File{
		{Path: "ca-cert.pem", Data: []byte("cert " + gen)},
		{Path: "ca-key.pem", Data: []byte("key " + gen), Secret: true},
		{Path: "cert-chain.pem", Data: []byte("chain " + gen)},
	}
}

func TestWriteDirReplacesTheWholeSetAndKeepsOtherFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if err := pki.WriteDir(dir, set("old"), false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "ca-key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "east"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "east", "ca-key.pem"), []byte("east key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteDir(dir, set("new"), false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("overwrite without force: %v, want a refusal naming --force", err)
	}
	if err := pki.WriteDir(dir, set("new"), true); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ca-cert.pem": "cert new", "ca-key.pem": "key new", "cert-chain.pem": "chain new", "notes.txt": "mine", "east/ca-key.pem": "east key"}
	got := readDir(t, dir)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("files %v, want exactly %v", got, want)
	}
	assertNoTemp(t, filepath.Dir(dir))
}

// TestWriteDirIsAllOrNothing: a write that fails on the third file leaves
// the previous set complete, byte for byte, and no temporary directory.
func TestWriteDirIsAllOrNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if err := pki.WriteDir(dir, set("old"), false); err != nil {
		t.Fatal(err)
	}
	before := readDir(t, dir)
	bad := set("new")
	bad[2].Path = filepath.Join("no-such-dir", "cert-chain.pem") // fails after two files are written
	err := pki.WriteDir(dir, bad, true)
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("error = %v, want a failure naming %s", err, dir)
	}
	if after := readDir(t, dir); len(after) != len(before) || after["ca-key.pem"] != "key old" || after["ca-cert.pem"] != "cert old" || after["cert-chain.pem"] != "chain old" {
		t.Errorf("after a failed write: %v, want the previous set %v", after, before)
	}
	assertNoTemp(t, filepath.Dir(dir))
}

func TestWriteDirDropsAnOptionalFileTheNewSetLacks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if err := pki.WriteDir(dir, append(set("old"), pki.File{Path: "ca-crl.pem", Data: []byte("crl")}), false); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteDir(dir, append(set("new"), pki.File{Path: "ca-crl.pem", Drop: true}), true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca-crl.pem")); !os.IsNotExist(err) {
		t.Errorf("ca-crl.pem of the previous set kept: %v", err)
	}
}

func assertNoTemp(t *testing.T, parent string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary %s left in %s", e.Name(), parent)
		}
	}
}
