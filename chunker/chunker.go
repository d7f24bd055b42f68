package chunker

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/jotfs/fastcdc-go"
)

// Preset is a named, versioned set of FastCDC parameters. The name is recorded
// with every NAR cut with it; a NAR is only ever re-cut with the preset it names.
// New parameters get a new name: a preset's parameters never change.
type Preset struct {
	Name string
	Min  int
	Avg  int
	Max  int
}

// DefaultPreset is the preset new NARs are cut with unless configured otherwise.
const DefaultPreset = "fastcdc-64k-256k-1m"

var presets = map[string]Preset{}

func init() {
	for _, p := range []Preset{
		{"fastcdc-16k-64k-256k", 16 << 10, 64 << 10, 256 << 10},
		{"fastcdc-32k-128k-512k", 32 << 10, 128 << 10, 512 << 10},
		{"fastcdc-64k-256k-1m", 64 << 10, 256 << 10, 1 << 20},
		{"fastcdc-128k-512k-2m", 128 << 10, 512 << 10, 2 << 20},
		{"fastcdc-256k-1m-4m", 256 << 10, 1 << 20, 4 << 20},
	} {
		presets[p.Name] = p
	}
}

// LookupPreset returns the preset with the given name.
func LookupPreset(name string) (Preset, error) {
	p, ok := presets[name]
	if !ok {
		return Preset{}, fmt.Errorf("unknown chunker preset %q (known: %s)", name, strings.Join(PresetNames(), ", "))
	}
	return p, nil
}

// PresetNames lists the known presets, smallest average chunk first.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return presets[names[i]].Avg < presets[names[j]].Avg })
	return names
}

// Chunk is one piece of the stream. Data is only valid until the next call to Next.
type Chunk struct {
	Offset int64
	Data   []byte
}

// Chunker cuts a stream into chunks. It is not safe for concurrent use.
type Chunker struct {
	c *fastcdc.Chunker
}

// fastcdc-go XORs its Seed into a package-level table inside NewChunker, even
// when the seed is zero. That write races with every other chunker reading the
// table, so constructors take the write side of this lock and Next the read side.
// The read side costs an atomic add per chunk.
var tableMu sync.RWMutex

// New returns a Chunker that splits r with the parameters of p.
func New(r io.Reader, p Preset) (*Chunker, error) {
	if p.Name == "" {
		return nil, errors.New("chunker: preset has no name")
	}
	tableMu.Lock()
	c, err := fastcdc.NewChunker(r, fastcdc.Options{
		MinSize:     p.Min,
		AverageSize: p.Avg,
		MaxSize:     p.Max,
		BufSize:     2 * p.Max,
	})
	tableMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("chunker preset %s: %w", p.Name, err)
	}
	return &Chunker{c: c}, nil
}

// Next returns the next chunk, or io.EOF after the last one. An empty stream
// yields no chunks. Errors from the underlying reader are returned as they are.
func (c *Chunker) Next() (Chunk, error) {
	tableMu.RLock()
	ch, err := c.c.Next()
	tableMu.RUnlock()
	if err != nil {
		return Chunk{}, err
	}
	return Chunk{Offset: int64(ch.Offset), Data: ch.Data}, nil
}
