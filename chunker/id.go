// Package chunker splits byte streams into content-defined chunks with FastCDC
// and names each chunk by the BLAKE3-256 hash of its bytes.
//
// It is a leaf package: it does no I/O beyond the reader it is given.
package chunker

import (
	"encoding/hex"
	"fmt"

	"lukechampine.com/blake3"
)

// ID names a chunk: the BLAKE3-256 hash of its uncompressed, unencoded bytes.
type ID [32]byte

// Sum returns the ID of data.
func Sum(data []byte) ID { return ID(blake3.Sum256(data)) }

// String returns the ID as 64 lowercase hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero ID, which names no chunk.
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the 64-hex-digit form produced by String.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("chunk id %q: want %d hex digits, got %d", s, 2*len(id), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
