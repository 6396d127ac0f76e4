package cluster

import "testing"

func TestFreePortsAreDistinctAndBelowTheEphemeralRange(t *testing.T) {
	lo, hi := belowEphemeral()
	ports, err := FreePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		if p < lo || p > hi {
			t.Errorf("port %d outside [%d, %d]: the kernel may hand it to another socket before its component binds it", p, lo, hi)
		}
	}
}
