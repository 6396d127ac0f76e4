package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxFileSize bounds every CA file meshca reads. Real bundles are a few KiB;
// the bound keeps memory and time flat when a user points meshca at junk.
const MaxFileSize = 1 << 20

// ErrTooLarge is returned for inputs above MaxFileSize.
var ErrTooLarge = errors.New("larger than 1 MiB: not a CA file")

// ReadFile reads a CA file of at most MaxFileSize bytes. Only a regular file
// (or a symlink to one, as in a Secret volume) is read: a FIFO, device or
// socket is refused at once by name, before a single byte is read, so that
// meshca never blocks on a path that is not a file.
func ReadFile(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO without a writer would otherwise block
	// before the type could be checked.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, not a regular file: give the path of a PEM file: %w", path, FileKind(st.Mode()), ErrNotRegular)
	}
	return ReadAll(path, f)
}

// ErrNotRegular is returned by ReadFile for anything but a regular file.
var ErrNotRegular = errors.New("not a regular file")

// FileKind names the type of a file mode for errors ("a named pipe (FIFO)").
func FileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "an irregular file"
}

// ReadAll reads at most MaxFileSize bytes from r; name is used in errors.
func ReadAll(name string, r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: %w", name, ErrTooLarge)
	}
	return data, nil
}

// Block is one PEM block of a file with its position, for precise errors.
type Block struct {
	*pem.Block
	// Index is the 1-based position of the block in its file.
	Index int
	// Start and End delimit the block's exact bytes in the file, from
	// "-----BEGIN" through the newline after its END line.
	Start, End int
}

// DecodeBlocks splits data into PEM blocks. It rejects empty input, input
// without PEM and any non-blank bytes between or after blocks (a truncated
// or pasted-over file), so that a file is either wholly understood or refused.
func DecodeBlocks(name string, data []byte) ([]Block, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s: empty file: expected PEM data", name)
	}
	var blocks []Block
	rest := data
	for {
		trimmed := bytes.TrimSpace(rest)
		if len(trimmed) == 0 {
			break
		}
		block, next := pem.Decode(rest)
		if block == nil {
			if len(blocks) == 0 {
				return nil, fmt.Errorf("%s: no PEM block found (malformed, truncated or not PEM at all)", name)
			}
			return nil, fmt.Errorf("%s: unparsable data after PEM block %d (malformed or truncated PEM)", name, len(blocks))
		}
		// pem.Decode silently skips leading junk and undecodable blocks;
		// refuse both.
		seg := rest[:len(rest)-len(next)]
		if !bytes.HasPrefix(bytes.TrimSpace(seg), []byte("-----BEGIN")) {
			return nil, fmt.Errorf("%s: unexpected data before PEM block %d", name, len(blocks)+1)
		}
		if bytes.Count(seg, []byte("-----BEGIN")) != 1 {
			return nil, fmt.Errorf("%s: PEM block %d is malformed (bad base64, headers or END line)", name, len(blocks)+1)
		}
		offset := len(data) - len(rest)
		start := offset + bytes.Index(rest, []byte("-----BEGIN"))
		blocks = append(blocks, Block{Block: block, Index: len(blocks) + 1, Start: start, End: len(data) - len(next)})
		rest = next
	}
	return blocks, nil
}

// ParseCertificates parses every PEM block of data as a certificate. Any block
// of another type, or any undecodable byte, is an error naming the file and
// the block.
func ParseCertificates(name string, data []byte) ([]*x509.Certificate, error) {
	blocks, err := DecodeBlocks(name, data)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for _, b := range blocks {
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %d is %q, expected CERTIFICATE", name, b.Index, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %w", name, b.Index, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// PoolCertificates returns the certificates crypto/x509's
// CertPool.AppendCertsFromPEM would take from data: every CERTIFICATE block
// that parses, whatever text surrounds it, other blocks skipped. It is how
// the API server reads a webhook's caBundle, so a bundle ParseCertificates
// refuses (a comment line above the block) can still be one it trusts.
func PoolCertificates(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for rest := data; len(rest) > 0; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// ParseCertificateFile reads and parses a certificate file.
func ParseCertificateFile(path string) ([]*x509.Certificate, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCertificates(path, data)
}

// IsPrivateKeyBlock reports whether a PEM block type holds a private key.
func IsPrivateKeyBlock(typ string) bool {
	switch typ {
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY":
		return true
	}
	return false
}

// ParseKeyBlock parses one private key block (PKCS#8, PKCS#1 or SEC 1).
func ParseKeyBlock(name string, b Block) (crypto.Signer, error) {
	var (
		key any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil && pkcs8Algorithm(b.Bytes).Equal(oidDSA) {
			return nil, unsupportedKey(name, b, "DSA")
		}
	case "DSA PRIVATE KEY":
		return nil, unsupportedKey(name, b, "DSA")
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("%s: PEM block %d is an encrypted private key: istiod cannot read it; decrypt it first (openssl pkey -in KEY -out KEY.plain)", name, b.Index)
	default:
		return nil, fmt.Errorf("%s: PEM block %d is %q, expected a private key", name, b.Index, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: PEM block %d: %w", name, b.Index, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	case crypto.Signer:
		return k, nil
	}
	return nil, fmt.Errorf("%s: PEM block %d: unsupported private key type %T", name, b.Index, key)
}

// oidDSA is the algorithm identifier of a DSA key (RFC 3279).
var oidDSA = asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}

// pkcs8Algorithm returns the key algorithm named in a PKCS#8 structure, or
// nil when der is not one.
func pkcs8Algorithm(der []byte) asn1.ObjectIdentifier {
	var p struct {
		Version int
		Algo    pkix.AlgorithmIdentifier
		Key     []byte
	}
	if _, err := asn1.Unmarshal(der, &p); err != nil {
		return nil
	}
	return p.Algo.Algorithm
}

// unsupportedKey is the error for a private key of an algorithm istiod
// cannot use, named by its real name.
func unsupportedKey(name string, b Block, alg string) error {
	return fmt.Errorf("%s: PEM block %d is a %s private key: istiod (Go crypto/x509) cannot sign with %s; use an RSA 2048-4096 or ECDSA P-256/P-384 CA (meshca ca root / meshca ca intermediate --key-type)", name, b.Index, alg, alg)
}

// ParseKey parses a file holding exactly one private key.
func ParseKey(name string, data []byte) (crypto.Signer, error) {
	blocks, err := DecodeBlocks(name, data)
	if err != nil {
		return nil, err
	}
	if len(blocks) != 1 {
		return nil, fmt.Errorf("%s: holds %d PEM blocks, expected exactly one private key", name, len(blocks))
	}
	return ParseKeyBlock(name, blocks[0])
}

// ParseKeyFile reads and parses a private key file.
func ParseKeyFile(path string) (crypto.Signer, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseKey(path, data)
}
