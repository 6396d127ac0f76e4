package proxy

import (
	"fmt"
	"io"
	"os"
)

// ReadInput reads a dump from path, or from stdin when path is "-", refusing
// anything larger than MaxDumpSize; source names where it came from ("file
// X" or "stdin") for messages.
func ReadInput(path string, stdin io.Reader) (data []byte, source string, err error) {
	source = "file " + path
	r := stdin
	if path == "-" {
		source = "stdin"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, "", err
		}
		defer func() { _ = f.Close() }()
		r = f
	}
	data, err = io.ReadAll(io.LimitReader(r, MaxDumpSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", source, err)
	}
	if len(data) > MaxDumpSize {
		return nil, "", fmt.Errorf("%s: larger than %d MiB: not a config dump", source, MaxDumpSize>>20)
	}
	return data, source, nil
}
