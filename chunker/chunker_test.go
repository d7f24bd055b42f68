package chunker_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/narstore/narstore/chunker"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// goldenInput is 3 MiB from a fixed-seed PRNG, with a repeated region so that
// dedup-relevant boundary resynchronisation is also pinned down.
func goldenInput() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 3<<20)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	copy(b[2<<20:], b[100<<10:100<<10+512<<10])
	return b
}

func cut(t testing.TB, data []byte, p chunker.Preset) []chunker.Chunk {
	t.Helper()
	c, err := chunker.New(bytes.NewReader(data), p)
	if err != nil {
		t.Fatal(err)
	}
	var out []chunker.Chunk
	for {
		ch, err := c.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, chunker.Chunk{Offset: ch.Offset, Data: append([]byte(nil), ch.Data...)})
	}
}

func TestGolden(t *testing.T) {
	data := goldenInput()
	for _, name := range []string{"fastcdc-16k-64k-256k", "fastcdc-64k-256k-1m"} {
		t.Run(name, func(t *testing.T) {
			p, err := chunker.LookupPreset(name)
			if err != nil {
				t.Fatal(err)
			}
			var got strings.Builder
			for _, ch := range cut(t, data, p) {
				fmt.Fprintf(&got, "%d %d %s\n", ch.Offset, len(ch.Data), chunker.Sum(ch.Data))
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./chunker -update to create it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("chunk boundaries or IDs changed for preset %s; a preset's output must never change.\ngot:\n%s\nwant:\n%s", name, got.String(), want)
			}
		})
	}
}

func TestChunksCoverInputWithinBounds(t *testing.T) {
	data := goldenInput()
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	chunks := cut(t, data, p)
	var joined []byte
	for i, ch := range chunks {
		if ch.Offset != int64(len(joined)) {
			t.Fatalf("chunk %d at offset %d, want %d", i, ch.Offset, len(joined))
		}
		if len(ch.Data) > p.Max || (len(ch.Data) < p.Min && i != len(chunks)-1) {
			t.Errorf("chunk %d has %d bytes, outside [%d,%d]", i, len(ch.Data), p.Min, p.Max)
		}
		joined = append(joined, ch.Data...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatal("chunks do not reassemble to the input")
	}
}

func TestEmptyInputHasNoChunks(t *testing.T) {
	p, _ := chunker.LookupPreset(chunker.DefaultPreset)
	if got := cut(t, nil, p); len(got) != 0 {
		t.Fatalf("got %d chunks for empty input", len(got))
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(b []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("boom")
	}
	n := min(len(b), f.n)
	f.n -= n
	return n, nil
}

func TestReaderErrorIsReturned(t *testing.T) {
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	c, err := chunker.New(&failingReader{n: 1 << 20}, p)
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := c.Next()
		if err == io.EOF {
			t.Fatal("got EOF, want the reader's error")
		}
		if err != nil {
			if err.Error() != "boom" {
				t.Fatalf("got %v, want boom", err)
			}
			return
		}
	}
}

func TestConcurrentChunkersAgree(t *testing.T) {
	data := goldenInput()[:1<<20]
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	want := len(cut(t, data, p))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := len(cut(t, data, p)); got != want {
				t.Errorf("got %d chunks, want %d", got, want)
			}
		}()
	}
	wg.Wait()
}

func TestIDRoundTrip(t *testing.T) {
	id := chunker.Sum([]byte("hello"))
	back, err := chunker.ParseID(id.String())
	if err != nil || back != id {
		t.Fatalf("ParseID(String()) = %v, %v", back, err)
	}
	// BLAKE3("hello"), from the reference implementation's b3sum.
	if got := id.String(); got != "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f" {
		t.Fatalf("Sum(hello) = %s", got)
	}
	for _, bad := range []string{"", "zz", strings.Repeat("g", 64)} {
		if _, err := chunker.ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) succeeded", bad)
		}
	}
}

func TestUnknownPreset(t *testing.T) {
	if _, err := chunker.LookupPreset("nope"); err == nil || !strings.Contains(err.Error(), chunker.DefaultPreset) {
		t.Fatalf("want an error listing known presets, got %v", err)
	}
}

func BenchmarkChunk(b *testing.B) {
	data := goldenInput()
	for _, name := range chunker.PresetNames() {
		b.Run(name, func(b *testing.B) {
			p, _ := chunker.LookupPreset(name)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c, _ := chunker.New(bytes.NewReader(data), p)
				for {
					if _, err := c.Next(); err != nil {
						break
					}
				}
			}
		})
	}
}

func BenchmarkSum(b *testing.B) {
	data := goldenInput()[:256<<10]
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		chunker.Sum(data)
	}
}
