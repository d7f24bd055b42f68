package refnorm_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/narstore/narstore/refnorm"
)

const (
	h1 = "0bz7hsnq3pxgmg4vlnxigpr2jzaxkw70"
	h2 = "gaskp60533kin7msfx3ixjnv09nsnasm"
	h3 = "qg0cb9pjwn2p044axy330x71j3c2m1k4" // not a reference
)

func normalize(t *testing.T, in []byte, refs []string, r func(io.Reader) io.Reader) ([]byte, *refnorm.Map) {
	t.Helper()
	n := refnorm.NewNormalizer(r(bytes.NewReader(in)), refs)
	out, err := io.ReadAll(n)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("length changed: %d -> %d", len(in), len(out))
	}
	return out, n.Map()
}

func TestNormalizeAndRestore(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	var in bytes.Buffer
	for i := range 20000 {
		switch rng.IntN(6) {
		case 0:
			in.WriteString("/nix/store/" + h1 + "-glibc/lib")
		case 1:
			in.WriteString("#!/nix/store/" + h2 + "-bash/bin/sh\n")
		case 2:
			in.WriteString("/nix/store/" + h3 + "-other") // not a reference: kept
		case 3:
			in.WriteString(string(refnorm.Placeholder)) // placeholder in real content
		case 4:
			in.WriteString("/nix/store/" + string(refnorm.Placeholder) + "-x") // even after the prefix
		default:
			b := make([]byte, rng.IntN(300))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			in.Write(b)
		}
		_ = i
	}
	orig := in.Bytes()
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"onebyte":  iotest.OneByteReader,
		"halfread": iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			out, m := normalize(t, orig, []string{h1, h2}, wrap)
			if bytes.Contains(out, []byte(h1)) || bytes.Contains(out, []byte(h2)) {
				t.Fatal("a reference hash survived normalization")
			}
			if !bytes.Contains(out, []byte(h3)) {
				t.Fatal("a non-reference hash was replaced")
			}
			m2, err := refnorm.Unmarshal(m.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			// Restore in arbitrary pieces, as reassembly does chunk by chunk.
			restored := make([]byte, 0, len(out))
			for off := 0; off < len(out); {
				n := 1 + rng.IntN(5000)
				if off+n > len(out) {
					n = len(out) - off
				}
				piece := append([]byte(nil), out[off:off+n]...)
				m2.Restore(piece, uint64(off))
				restored = append(restored, piece...)
				off += n
			}
			if !bytes.Equal(restored, orig) {
				t.Fatal("restore is not byte-exact")
			}
		})
	}
}

func TestReferenceMissingFromNarinfoIsLeftAlone(t *testing.T) {
	in := []byte("x/nix/store/" + h1 + "-a y/nix/store/" + h2 + "-b")
	out, m := normalize(t, in, []string{h1}, func(r io.Reader) io.Reader { return r })
	if !strings.Contains(string(out), h2) || strings.Contains(string(out), h1) || len(m.Offsets) != 1 {
		t.Fatalf("got %q, %v", out, m)
	}
	b := append([]byte(nil), out...)
	m.Restore(b, 0)
	if !bytes.Equal(b, in) {
		t.Fatal("not restored")
	}
}

func TestMatchAtEndAndTruncated(t *testing.T) {
	for _, in := range []string{"/nix/store/" + h1, "/nix/store/" + h1[:20], "ab/nix/store/", ""} {
		out, m := normalize(t, []byte(in), []string{h1}, iotest.OneByteReader)
		b := append([]byte(nil), out...)
		m.Restore(b, 0)
		if string(b) != in {
			t.Fatalf("%q: restored %q", in, b)
		}
	}
}

func TestUnmarshalRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{{5}, {1, 'a'}, {0, 2, 1}, {0, 1, 0, 3}} {
		if _, err := refnorm.Unmarshal(b); err == nil {
			t.Errorf("Unmarshal(%v) succeeded", b)
		}
	}
}

func BenchmarkNormalize(b *testing.B) {
	data := bytes.Repeat([]byte("some text /nix/store/"+h1+"-glibc/lib/libc.so.6 more text and binary \x00\x01\x02 "), 1<<14)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		io.Copy(io.Discard, refnorm.NewNormalizer(bytes.NewReader(data), []string{h1, h2}))
	}
}
