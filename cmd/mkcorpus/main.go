// Command mkcorpus builds a multi-bump benchmark corpus for narstore bench
// from real package releases (npm tarballs fetched by scripts/fetch-corpus.sh).
//
// Each package version becomes a store path laid out like a Nix npm package
// (lib/node_modules/<name>, bin/ wrappers), with shebangs patched to a
// /nix/store/<hash>-nodejs path as Nix's patchShebangs does, and references
// to nodejs and itself. A bump marked "r" in the spec is a mass rebuild: every
// store path hash changes (so every embedded reference changes) while the
// versions stay. Output:
//
//	OUT/cache/            signed binary cache (narinfo + nar/*.nar.xz), usable as file://
//	OUT/bumps/bumpN/      the bump's NARs as <storepath-basename>.nar.xz
//	OUT/bumps/bumpN.store-paths
//	OUT/key.sec, OUT/key.pub
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/narstore/narstore/internal/narinfo"
)

type spec struct {
	bumps   []string // e.g. "1", "4r"
	pkgs    []string
	version map[string][]string
}

func parseSpec(path string) (*spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := &spec{version: map[string][]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if fields[0] == "bumps" {
			s.bumps = fields[1:]
			continue
		}
		if len(s.bumps) == 0 || len(fields)-1 != len(s.bumps) {
			return nil, fmt.Errorf("%s: package %s needs one version per bump (%d)", path, fields[0], len(s.bumps))
		}
		s.pkgs = append(s.pkgs, fields[0])
		s.version[fields[0]] = fields[1:]
	}
	return s, sc.Err()
}

func tarballName(pkg, version string) string {
	return strings.NewReplacer("@", "", "/", "-").Replace(pkg) + "-" + version + ".tgz"
}

func storeHash(name, version string, gen int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("narstore-corpus;%s;%s;%d", name, version, gen)))
	return nixbase32.EncodeToString(h[:20])
}

func pathName(pkg, version string) string {
	return strings.NewReplacer("@", "", "/", "-").Replace(pkg) + "-" + version
}

func main() {
	specPath := flag.String("spec", "scripts/corpus.spec", "corpus spec")
	dl := flag.String("downloads", "", "directory of npm tarballs (scripts/fetch-corpus.sh)")
	out := flag.String("out", "", "output directory")
	node := flag.String("node", "/usr/bin/node", "node binary packaged as the nodejs store path every package references (empty: none)")
	flag.Parse()
	if *dl == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: mkcorpus --spec scripts/corpus.spec --downloads DIR --out DIR")
		os.Exit(2)
	}
	if err := build(*specPath, *dl, *out, *node); err != nil {
		fmt.Fprintln(os.Stderr, "mkcorpus:", err)
		os.Exit(1)
	}
}

type built struct {
	base string // store path basename
	file string // cache-relative nar file
}

func build(specPath, dl, out, node string) error {
	sp, err := parseSpec(specPath)
	if err != nil {
		return err
	}
	cache := filepath.Join(out, "cache")
	if err := os.MkdirAll(filepath.Join(cache, "nar"), 0o755); err != nil {
		return err
	}
	os.WriteFile(filepath.Join(cache, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), 0o644)
	sk, pk, err := loadOrMakeKey(out)
	if err != nil {
		return err
	}
	done := map[string]built{} // basename -> built
	var mu sync.Mutex
	gen := 0
	for i, b := range sp.bumps {
		if strings.HasSuffix(b, "r") {
			gen++
		}
		bumpDir := filepath.Join(out, "bumps", fmt.Sprintf("bump%d", i+1))
		if err := os.MkdirAll(bumpDir, 0o755); err != nil {
			return err
		}
		type job struct{ pkg, version string }
		var jobs []job
		if node != "" {
			jobs = append(jobs, job{"nodejs", "system"})
		}
		for _, p := range sp.pkgs {
			jobs = append(jobs, job{p, sp.version[p][i]})
		}
		nodeBase := ""
		if node != "" {
			nodeBase = storeHash("nodejs", "system", gen) + "-nodejs-system"
		}
		var paths []string
		errs := make(chan error, len(jobs))
		sem := make(chan struct{}, 2)
		var wg sync.WaitGroup
		for _, j := range jobs {
			base := storeHash(j.pkg, j.version, gen) + "-" + pathName(j.pkg, j.version)
			if j.pkg == "nodejs" {
				base = nodeBase
			}
			paths = append(paths, narinfo.StoreDir+"/"+base)
			mu.Lock()
			_, ok := done[base]
			mu.Unlock()
			if ok {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				bt, err := makePath(cache, dl, node, j.pkg, j.version, base, nodeBase, sk)
				if err != nil {
					errs <- fmt.Errorf("%s@%s: %w", j.pkg, j.version, err)
					return
				}
				mu.Lock()
				done[base] = bt
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		for _, p := range paths {
			base := strings.TrimPrefix(p, narinfo.StoreDir+"/")
			link := filepath.Join(bumpDir, base+".nar.xz")
			os.Remove(link)
			if err := os.Link(filepath.Join(cache, done[base].file), link); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(out, "bumps", fmt.Sprintf("bump%d.store-paths", i+1)), []byte(strings.Join(paths, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		fmt.Printf("bump %d (%s): %d store paths\n", i+1, b, len(paths))
	}
	fmt.Printf("cache: file://%s\ntrusted key: %s\n", cache, pk)
	return nil
}

func loadOrMakeKey(out string) (signature.SecretKey, string, error) {
	skPath := filepath.Join(out, "key.sec")
	if b, err := os.ReadFile(skPath); err == nil {
		sk, err := narinfo.LoadSecretKey(string(b))
		return sk, sk.ToPublicKey().String(), err
	}
	sk, pk, err := signature.GenerateKeypair("narstore-corpus-1", nil)
	if err != nil {
		return sk, "", err
	}
	os.WriteFile(skPath, []byte(sk.String()), 0o600)
	os.WriteFile(filepath.Join(out, "key.pub"), []byte(pk.String()+"\n"), 0o644)
	return sk, pk.String(), nil
}

// makePath lays out one store path, dumps it as a NAR, compresses it with
// xz -6 as Hydra does, and writes it and its signed narinfo into the cache.
func makePath(cache, dl, node, pkg, version, base, nodeBase string, sk signature.SecretKey) (built, error) {
	tmp, err := os.MkdirTemp("", "mkcorpus")
	if err != nil {
		return built{}, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, base)
	self := narinfo.StoreDir + "/" + base
	refs := []string{base}
	if pkg == "nodejs" {
		if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
			return built{}, err
		}
		b, err := os.ReadFile(node)
		if err != nil {
			return built{}, err
		}
		if err := os.WriteFile(filepath.Join(root, "bin", "node"), b, 0o755); err != nil {
			return built{}, err
		}
	} else {
		refs = append(refs, nodeBase)
		interp := narinfo.StoreDir + "/" + nodeBase + "/bin/node"
		mod := filepath.Join(root, "lib", "node_modules", pkg)
		bins, err := extractNpm(filepath.Join(dl, tarballName(pkg, version)), mod, interp)
		if err != nil {
			return built{}, err
		}
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		for name, target := range bins {
			script := fmt.Sprintf("#!%s\nrequire(%q);\n", interp, self+"/lib/node_modules/"+pkg+"/"+target)
			os.WriteFile(filepath.Join(root, "bin", filepath.Base(name)), []byte(script), 0o755)
		}
		os.MkdirAll(filepath.Join(root, "nix-support"), 0o755)
		os.WriteFile(filepath.Join(root, "nix-support", "propagated-build-inputs"), []byte(narinfo.StoreDir+"/"+nodeBase+"\n"), 0o644)
	}
	var narBuf bytes.Buffer
	if err := nar.DumpPath(&narBuf, root); err != nil {
		return built{}, err
	}
	cmd := exec.Command("xz", "-6", "-T1", "-c")
	cmd.Stdin = bytes.NewReader(narBuf.Bytes())
	xzData, err := cmd.Output()
	if err != nil {
		return built{}, fmt.Errorf("xz: %w", err)
	}
	fh := sha256.Sum256(xzData)
	file := "nar/" + nixbase32.EncodeToString(fh[:]) + ".nar.xz"
	if err := os.WriteFile(filepath.Join(cache, file), xzData, 0o644); err != nil {
		return built{}, err
	}
	ni := &narinfo.NarInfo{StorePath: self, URL: file, Compression: "xz", FileHash: narinfo.FormatHash(fh), FileSize: uint64(len(xzData)),
		NarHash: sha256.Sum256(narBuf.Bytes()), NarSize: uint64(narBuf.Len()), References: refs}
	if err := ni.Sign(sk); err != nil {
		return built{}, err
	}
	if err := os.WriteFile(filepath.Join(cache, ni.HashPart()+".narinfo"), []byte(ni.String()), 0o644); err != nil {
		return built{}, err
	}
	return built{base: base, file: file}, nil
}

// extractNpm unpacks an npm tarball (entries under package/) into dst,
// rewriting "#!/usr/bin/env node" shebangs to interp. It returns the bin map
// from package.json, if any.
func extractNpm(tgz, dst, interp string) (map[string]string, error) {
	f, err := os.Open(tgz)
	if err != nil {
		return nil, fmt.Errorf("%w (run scripts/fetch-corpus.sh first)", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(gz)
	bins := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		_, rel, ok := strings.Cut(h.Name, "/")
		if !ok || strings.Contains(rel, "..") {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		if bytes.HasPrefix(b, []byte("#!/usr/bin/env node")) {
			b = append([]byte("#!"+interp), b[len("#!/usr/bin/env node"):]...)
		}
		p := filepath.Join(dst, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		mode := os.FileMode(0o644)
		if h.Mode&0o111 != 0 {
			mode = 0o755
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			return nil, err
		}
		if rel == "package.json" {
			bins = binsOf(b)
		}
	}
	return bins, nil
}
