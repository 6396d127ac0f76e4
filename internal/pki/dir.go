package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// WriteDir writes files (Path relative to dir) as one set: all of them land
// in dir together, or none does. They are written into a sibling temporary
// directory, which then takes dir's place in one rename (an atomic exchange
// where the kernel offers it); the previous files stay in place until the new
// set is complete, so an interrupted or failed write never leaves a new
// ca-key.pem beside an old cert-chain.pem. Other files and subdirectories
// already in dir are carried over (hard links, nothing copied). Keys
// are 0600, other files 0644, a new dir 0700. Unless force is set, nothing is
// written when a private key would be overwritten.
func WriteDir(dir string, files []File, force bool) error {
	st, err := os.Lstat(dir)
	exists := err == nil
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("check %s: %w", dir, err)
	case !st.IsDir():
		return fmt.Errorf("%s is %s, not a directory: choose another output directory", dir, FileKind(st.Mode()))
	}
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = f.Path
		if !force && f.Secret && !f.Drop && exists {
			if _, err := os.Lstat(filepath.Join(dir, f.Path)); err == nil {
				return fmt.Errorf("%s already exists: refusing to overwrite a private key (choose another --out, or pass --force)", filepath.Join(dir, f.Path))
			}
		}
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".new-")
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(tmp)
		}
	}()
	if exists {
		if err := carryOver(dir, tmp, names, st.Mode().Perm()); err != nil {
			return err
		}
	}
	for _, f := range files {
		if f.Drop {
			continue
		}
		mode := os.FileMode(0o644)
		if f.Secret {
			mode = 0o600
		}
		if err := writeNew(filepath.Join(tmp, f.Path), f.Data, mode); err != nil {
			return fmt.Errorf("write %s: %w", filepath.Join(dir, f.Path), err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	if !exists {
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("write %s: %w", dir, err)
		}
		done = true
		return syncDir(parent)
	}
	if err := replaceDir(tmp, dir); err != nil {
		return fmt.Errorf("write %s (the previous files are unchanged): %w", dir, err)
	}
	// tmp now holds the previous set.
	_ = syncDir(parent)
	return nil
}

// carryOver hard-links into tmp the files of dir that are not rewritten
// (recreating subdirectories, such as the per-cluster directories of a
// tools/certs root directory), so that replacing dir loses nothing else it
// held and copies no byte.
func carryOver(dir, tmp string, rewritten []string, perm fs.FileMode) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		if slices.Contains(rewritten, e.Name()) {
			continue
		}
		from, to := filepath.Join(dir, e.Name()), filepath.Join(tmp, e.Name())
		if e.IsDir() {
			st, err := e.Info()
			if err != nil {
				return fmt.Errorf("keep %s: %w", from, err)
			}
			if err := os.Mkdir(to, 0o700); err != nil {
				return fmt.Errorf("keep %s: %w", from, err)
			}
			if err := carryOver(from, to, nil, st.Mode().Perm()); err != nil {
				return err
			}
			continue
		}
		if err := os.Link(from, to); err != nil {
			return fmt.Errorf("keep %s: %w", from, err)
		}
	}
	return os.Chmod(tmp, perm)
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // umask-proof
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

// replaceDirByRenames moves dir aside, moves tmp into its place and leaves
// the previous set at tmp; when the second rename fails the previous set is
// put back. dir is briefly absent, but never half-written.
func replaceDirByRenames(tmp, dir string) error {
	old := tmp + ".old"
	if err := os.Rename(dir, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.Rename(old, dir)
		return err
	}
	return os.Rename(old, tmp)
}
