// Package nixtest builds real Nix test fixtures: NARs of real files (byte-identical
// to nix-store --dump) and signed binary caches on disk, servable over file://
// or HTTP.
package nixtest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/ulikunitz/xz"

	"github.com/narstore/narstore/internal/narinfo"
)

// DumpPath returns the NAR serialisation of path.
func DumpPath(t testing.TB, path string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := nar.DumpPath(&b, path); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// GoRoot returns a directory of real files shipped with the Go toolchain,
// e.g. GoRoot("src/net/http").
func GoRoot(t testing.TB, sub string) string {
	t.Helper()
	p := filepath.Join(runtime.GOROOT(), sub)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("real fixture %s not available: %v", p, err)
	}
	return p
}

// RandomHashPart returns a random valid store path hash part.
func RandomHashPart() string {
	var b [20]byte
	rand.Read(b[:])
	return nixbase32.EncodeToString(b[:])
}

// Cache is a signed binary cache directory.
type Cache struct {
	Dir       string
	SecretKey signature.SecretKey
	PublicKey signature.PublicKey
}

// NewCache creates an empty cache in a temp dir with nix-cache-info and a fresh key.
func NewCache(t testing.TB, keyName string) *Cache {
	t.Helper()
	dir := t.TempDir()
	sk, pk, err := signature.GenerateKeypair(keyName, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "nar"), 0o755)
	os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), 0o644)
	return &Cache{Dir: dir, SecretKey: sk, PublicKey: pk}
}

// URL is the cache's file:// URL.
func (c *Cache) URL() string { return "file://" + c.Dir }

// Path describes one store path to add.
type Path struct {
	Name        string   // store path name
	HashPart    string   // "" for random
	NAR         []byte   // its NAR
	References  []string // basenames
	Compression string   // none, xz, zstd, bzip2
	Unsigned    bool
}

// Add writes the NAR (compressed) and a signed narinfo, Hydra-style
// (URL nar/<filehash>.nar.<ext>), and returns the narinfo.
func (c *Cache) Add(t testing.TB, p Path) *narinfo.NarInfo {
	t.Helper()
	if p.HashPart == "" {
		p.HashPart = RandomHashPart()
	}
	if p.Compression == "" {
		p.Compression = "xz"
	}
	file, ext := Compress(t, p.NAR, p.Compression)
	fh := sha256.Sum256(file)
	url := "nar/" + nixbase32.EncodeToString(fh[:]) + ".nar" + ext
	if err := os.WriteFile(filepath.Join(c.Dir, url), file, 0o644); err != nil {
		t.Fatal(err)
	}
	ni := &narinfo.NarInfo{
		StorePath: narinfo.StoreDir + "/" + p.HashPart + "-" + p.Name, URL: url, Compression: p.Compression,
		FileHash: narinfo.FormatHash(fh), FileSize: uint64(len(file)),
		NarHash: sha256.Sum256(p.NAR), NarSize: uint64(len(p.NAR)), References: p.References,
	}
	if !p.Unsigned {
		if err := ni.Sign(c.SecretKey); err != nil {
			t.Fatal(err)
		}
	}
	c.WriteNarInfo(t, ni)
	return ni
}

// WriteNarInfo (re)writes a narinfo file verbatim.
func (c *Cache) WriteNarInfo(t testing.TB, ni *narinfo.NarInfo) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.Dir, ni.HashPart()+".narinfo"), []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// NARFile returns the path of a narinfo's NAR file.
func (c *Cache) NARFile(ni *narinfo.NarInfo) string { return filepath.Join(c.Dir, ni.URL) }

// Compress compresses data as Nix names it and returns the file extension.
func Compress(t testing.TB, data []byte, compression string) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	switch compression {
	case "none":
		return data, ""
	case "xz":
		if p, err := exec.LookPath("xz"); err == nil {
			cmd := exec.Command(p, "-6", "-c", "-T1")
			cmd.Stdin = bytes.NewReader(data)
			out, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			return out, ".xz"
		}
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
		return b.Bytes(), ".xz"
	case "zstd":
		w, _ := zstd.NewWriter(&b)
		w.Write(data)
		w.Close()
		return b.Bytes(), ".zst"
	case "bzip2":
		w, err := bzip2.NewWriter(&b, nil)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
		return b.Bytes(), ".bz2"
	}
	t.Fatalf("nixtest: unknown compression %q", compression)
	return nil, ""
}

// CopyTree copies the directories and regular files under src to dst.
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
