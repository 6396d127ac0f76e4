package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// projectVolume writes files into dir the way kubelet updates a Secret or
// ConfigMap volume: the data goes into a fresh timestamped directory,
// "..data" is switched to it by an atomic rename of a symlink, and each file
// name is a symlink through "..data". Watchers of dir (istiod's fsnotify
// watch on its cacerts directory) see one Create event per update and never
// a half-written bundle. It reports whether anything changed.
func projectVolume(dir string, files map[string][]byte) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("volume %s: %w", dir, err)
	}
	if same(dir, files) {
		return false, nil
	}
	stamp := "..volume_" + time.Now().UTC().Format("2006_01_02_15_04_05.000000000")
	data := filepath.Join(dir, stamp)
	if err := os.Mkdir(data, 0o700); err != nil {
		return false, fmt.Errorf("volume %s: %w", dir, err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(data, name), content, 0o600); err != nil {
			return false, fmt.Errorf("volume %s: %w", dir, err)
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(stamp, tmp); err != nil {
		return false, fmt.Errorf("volume %s: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return false, fmt.Errorf("volume %s: %w", dir, err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return false, fmt.Errorf("volume %s: %w", dir, err)
		}
	}
	// Files that left the Secret disappear, as with kubelet.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if n := e.Name(); n[0] != '.' && files[n] == nil {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	if old != "" && old != stamp {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return true, nil
}

func same(dir string, files map[string][]byte) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	n := 0
	for _, e := range entries {
		if e.Name()[0] == '.' {
			continue
		}
		n++
		got, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !bytes.Equal(got, files[e.Name()]) {
			return false
		}
	}
	return n == len(files)
}
