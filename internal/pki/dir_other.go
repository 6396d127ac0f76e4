//go:build !linux

package pki

// replaceDir replaces dir with tmp by two renames; afterwards tmp holds the
// previous set.
func replaceDir(tmp, dir string) error { return replaceDirByRenames(tmp, dir) }
