package proxy

import (
	"fmt"
	"io"
	"os"
)

// ReadInput reads a dump from path, or from stdin when path is "-", refusing
// anything larger than MaxDumpSize.
func ReadInput(path string, stdin io.Reader) ([]byte, error) {
	name := path
	r := stdin
	if path == "-" {
		name = "stdin"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer func() { _ = f.Close() }()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, MaxDumpSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > MaxDumpSize {
		return nil, fmt.Errorf("%s: larger than %d MiB: not a config dump", name, MaxDumpSize>>20)
	}
	return data, nil
}
