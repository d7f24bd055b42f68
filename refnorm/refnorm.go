// Package refnorm normalizes store references in NARs: every "/nix/store/<hash>"
// whose hash is one of a NAR's references (or its own path) gets a fixed
// placeholder instead of the hash, so rebuilds that differ only in those
// hashes chunk to the same bytes. The replaced offsets are recorded, and
// Restore writes the hashes back at exactly those offsets; placeholder bytes
// that occur in real content are never touched. Replacement keeps the
// length, so NAR offsets are the same before and after.
package refnorm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Transform is the name recorded with every NAR normalized by this version.
const Transform = "refnorm-v1"

// HashLen is the length of a store path hash part.
const HashLen = 32

// Placeholder replaces hash parts. 'e' is not in the nix-base32 alphabet, so
// a placeholder is never a real hash.
var Placeholder = bytes.Repeat([]byte{'e'}, HashLen)

var prefix = []byte("/nix/store/")

// Map records the replacements made in one NAR.
type Map struct {
	Hashes  []string // distinct hash parts
	Offsets []uint64 // ascending offsets of replaced hash parts
	Which   []uint32 // Hashes index per offset
}

// ErrCorrupt means a map does not decode.
var ErrCorrupt = errors.New("corrupt reference map")

// Marshal encodes the map compactly (hash table, then delta-coded offsets).
func (m *Map) Marshal() []byte {
	b := binary.AppendUvarint(nil, uint64(len(m.Hashes)))
	for _, h := range m.Hashes {
		b = append(b, h...)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Offsets)))
	var prev uint64
	for i, o := range m.Offsets {
		b = binary.AppendUvarint(b, o-prev)
		b = binary.AppendUvarint(b, uint64(m.Which[i]))
		prev = o
	}
	return b
}

// Unmarshal decodes Marshal's output.
func Unmarshal(b []byte) (*Map, error) {
	m := &Map{}
	r := bytes.NewReader(b)
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(len(b))/HashLen {
		return nil, ErrCorrupt
	}
	for range n {
		h := make([]byte, HashLen)
		if _, err := io.ReadFull(r, h); err != nil {
			return nil, ErrCorrupt
		}
		m.Hashes = append(m.Hashes, string(h))
	}
	k, err := binary.ReadUvarint(r)
	if err != nil || k > uint64(len(b)) {
		return nil, ErrCorrupt
	}
	var off uint64
	for range k {
		d, err1 := binary.ReadUvarint(r)
		w, err2 := binary.ReadUvarint(r)
		if err1 != nil || err2 != nil || w >= n {
			return nil, ErrCorrupt
		}
		off += d
		m.Offsets = append(m.Offsets, off)
		m.Which = append(m.Which, uint32(w))
	}
	return m, nil
}

// Restore writes the recorded hashes into b, which holds the NAR bytes
// starting at offset off. Hash parts that straddle b's ends are written in
// part. b must be a private copy.
func (m *Map) Restore(b []byte, off uint64) {
	end := off + uint64(len(b))
	i := sort.Search(len(m.Offsets), func(i int) bool { return m.Offsets[i]+HashLen > off })
	for ; i < len(m.Offsets) && m.Offsets[i] < end; i++ {
		h := m.Hashes[m.Which[i]]
		o := m.Offsets[i]
		src := h
		dst := int64(o) - int64(off)
		if dst < 0 {
			src = h[-dst:]
			dst = 0
		}
		copy(b[dst:], src)
	}
}

// Touches reports whether any replaced hash overlaps [off, off+n).
func (m *Map) Touches(off, n uint64) bool {
	i := sort.Search(len(m.Offsets), func(i int) bool { return m.Offsets[i]+HashLen > off })
	return i < len(m.Offsets) && m.Offsets[i] < off+n
}

// Normalizer reads a NAR and yields it with reference hashes replaced.
type Normalizer struct {
	r       io.Reader
	set     map[string]uint32
	m       Map
	pending []byte
	out     []byte
	base    uint64 // NAR offset of pending[0]
	eof     bool
	err     error
}

// NewNormalizer replaces the given hash parts (invalid ones are ignored).
func NewNormalizer(r io.Reader, hashParts []string) *Normalizer {
	n := &Normalizer{r: r, set: map[string]uint32{}}
	for _, h := range hashParts {
		if len(h) != HashLen || bytes.Equal([]byte(h), Placeholder) {
			continue
		}
		if _, ok := n.set[h]; !ok {
			n.set[h] = uint32(len(n.m.Hashes))
			n.m.Hashes = append(n.m.Hashes, h)
		}
	}
	return n
}

const (
	readSize = 256 << 10
	tail     = len("/nix/store/") + HashLen - 1 // a match may start this far before the end
)

func (n *Normalizer) Read(p []byte) (int, error) {
	for len(n.out) == 0 {
		if n.eof && len(n.pending) == 0 {
			if n.err != nil {
				return 0, n.err
			}
			return 0, io.EOF
		}
		if !n.eof {
			start := len(n.pending)
			n.pending = append(n.pending, make([]byte, readSize)...)
			k, err := io.ReadFull(n.r, n.pending[start:])
			n.pending = n.pending[:start+k]
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				n.eof = true
			} else if err != nil {
				n.eof, n.err = true, err
			}
		}
		safe := len(n.pending)
		if !n.eof {
			safe -= tail
			if safe <= 0 {
				continue
			}
		}
		n.replace(n.pending, safe)
		n.out = append(n.out[:0], n.pending[:safe]...)
		n.pending = append(n.pending[:0], n.pending[safe:]...)
		n.base += uint64(safe)
	}
	k := copy(p, n.out)
	n.out = n.out[k:]
	return k, nil
}

// replace handles matches starting before limit in buf.
func (n *Normalizer) replace(buf []byte, limit int) {
	if len(n.set) == 0 {
		return
	}
	for i := 0; i < limit; {
		j := bytes.Index(buf[i:], prefix)
		if j < 0 || i+j >= limit {
			return
		}
		at := i + j + len(prefix)
		if at+HashLen <= len(buf) {
			if w, ok := n.set[string(buf[at:at+HashLen])]; ok {
				n.m.Offsets = append(n.m.Offsets, n.base+uint64(at))
				n.m.Which = append(n.m.Which, w)
				copy(buf[at:], Placeholder)
			}
		}
		i = i + j + 1
	}
}

// Map returns the replacements made; call it after the last Read.
func (n *Normalizer) Map() *Map { return &n.m }

// String describes the map for logs.
func (m *Map) String() string {
	return fmt.Sprintf("%d references, %d replacements", len(m.Hashes), len(m.Offsets))
}
