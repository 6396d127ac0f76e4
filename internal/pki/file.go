package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File is one file to write: certificates are world-readable, private keys
// are 0600.
type File struct {
	Path string
	Data []byte
	// Secret marks private key material: mode 0600, never overwritten
	// without force.
	Secret bool
	// Drop, for WriteDir, removes the file from the set instead of writing
	// it (an optional file the new set does not have, such as ca-crl.pem).
	Drop bool
}

// WriteFiles writes files atomically (temp file in the same directory, then
// rename) after checking, before writing anything, that no private key
// would be overwritten unless force is set. Directories are created 0700.
func WriteFiles(files []File, force bool) error {
	if !force {
		for _, f := range files {
			if !f.Secret {
				continue
			}
			if _, err := os.Stat(f.Path); err == nil {
				return fmt.Errorf("%s already exists: refusing to overwrite a private key (choose another --out, or pass --force)", f.Path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("check %s: %w", f.Path, err)
			}
		}
	}
	for _, f := range files {
		mode := os.FileMode(0o644)
		if f.Secret {
			mode = 0o600
		}
		if err := writeAtomic(f.Path, f.Data, mode); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	// CreateTemp makes the file 0600; widen only what is public.
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
