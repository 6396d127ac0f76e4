package rotate

import (
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// checkNewCA refuses, before the first write of a rotation (even the
// backup), new CA material the mesh could not use: a root with a key the data
// plane cannot verify or a pathlen that leaves no room for the intermediate
// meshca issues under it, or a --ca-dir bundle that bundle.ValidateNew
// refuses. The rules live in pki and bundle; this only applies them early.
func checkNewCA(c *Cluster, root *pki.CA, now time.Time) error {
	if c.CA != nil {
		if err := bundle.ValidateNew(c.CA, now); err != nil {
			return fmt.Errorf("cluster %s: the new CA bundle is not valid, nothing was changed: %w", c.Name, err)
		}
		return nil
	}
	if root == nil {
		return nil
	}
	if err := pki.CheckKeyAlgorithm(root.Cert); err != nil {
		return fmt.Errorf("cluster %s: the new root cannot be used, nothing was changed: %w", c.Name, err)
	}
	if err := pki.CheckRootForIntermediates(root.Cert); err != nil {
		return fmt.Errorf("cluster %s: the new root cannot be used, nothing was changed: %w", c.Name, err)
	}
	return nil
}
