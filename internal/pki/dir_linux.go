package pki

import (
	"errors"

	"golang.org/x/sys/unix"
)

// replaceDir swaps the complete directory tmp with dir in one atomic
// renameat2(RENAME_EXCHANGE): dir holds either the whole previous set or the
// whole new one, at every instant. Afterwards tmp holds the previous set.
// Filesystems without the exchange fall back to two renames.
func replaceDir(tmp, dir string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return replaceDirByRenames(tmp, dir)
	}
	return err
}
