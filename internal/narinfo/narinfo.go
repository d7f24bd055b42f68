// Package narinfo reads and writes Nix .narinfo files the way Nix itself does
// (unknown keys ignored, values taken from colon+2), computes their signing
// fingerprint, and checks and makes ed25519 signatures.
package narinfo

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// StoreDir is the only store directory narstore serves.
const StoreDir = "/nix/store"

// HashPartLen is the length of a store path's nix-base32 hash part.
const HashPartLen = 32

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("malformed narinfo")

// NarInfo holds a narinfo's fields. NarHash is the raw SHA-256 digest.
type NarInfo struct {
	StorePath   string // absolute, /nix/store/<hash>-<name>
	URL         string
	Compression string // never empty after Parse: Nix's default is bzip2
	FileHash    string // as upstream wrote it; never verified by Nix
	FileSize    uint64
	NarHash     [32]byte
	NarSize     uint64
	References  []string // basenames, <hash>-<name>
	Deriver     string   // basename, may be empty
	System      string
	Sigs        []string // name:base64, in file order
	CA          string
}

// HashPart returns the store path's 32-character hash part.
func (n *NarInfo) HashPart() string { return HashPart(n.StorePath) }

// HashPart returns the hash part of an absolute store path or basename, or ""
// if it has none.
func HashPart(p string) string {
	p = strings.TrimPrefix(p, StoreDir+"/")
	if len(p) < HashPartLen {
		return ""
	}
	return p[:HashPartLen]
}

// ValidHashPart reports whether s is a 32-character nix-base32 hash part.
func ValidHashPart(s string) bool {
	if len(s) != HashPartLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nixbase32.Is(s[i]) {
			return false
		}
	}
	return true
}

// ValidBaseName reports whether s is <hash>-<name> with a valid hash part and
// a non-empty name of the characters Nix allows.
func ValidBaseName(s string) bool {
	if len(s) < HashPartLen+2 || s[HashPartLen] != '-' || !ValidHashPart(s[:HashPartLen]) {
		return false
	}
	name := s[HashPartLen+1:]
	if len(name) > 211 || name[0] == '.' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("+-._?=", c)) {
			return false
		}
	}
	return true
}

// ParseStorePath accepts /nix/store/<hash>-<name> and returns it unchanged if valid.
func ParseStorePath(p string) (string, error) {
	base, ok := strings.CutPrefix(p, StoreDir+"/")
	if !ok || !ValidBaseName(base) {
		return "", fmt.Errorf("%q is not a store path of the form %s/<32-char-hash>-<name>", p, StoreDir)
	}
	return p, nil
}

// NarHashString renders the NarHash as Nix writes it: sha256:<nix32>.
func (n *NarInfo) NarHashString() string { return FormatHash(n.NarHash) }

// FormatHash renders a SHA-256 digest as sha256:<nix32>.
func FormatHash(d [32]byte) string { return "sha256:" + nixbase32.EncodeToString(d[:]) }

// NarHash32 renders the NarHash as bare nix32, as used in our NAR URLs.
func (n *NarInfo) NarHash32() string { return nixbase32.EncodeToString(n.NarHash[:]) }

// ParseHash parses a SHA-256 hash in any form Nix accepts: sha256:<nix32|hex|base64>
// or SRI sha256-<base64>.
func ParseHash(s string) ([32]byte, error) {
	var d [32]byte
	var body string
	switch {
	case strings.HasPrefix(s, "sha256:"):
		body = s[len("sha256:"):]
	case strings.HasPrefix(s, "sha256-"):
		b, err := base64.StdEncoding.DecodeString(s[len("sha256-"):])
		if err != nil || len(b) != 32 {
			return d, fmt.Errorf("bad SRI sha256 hash %q", s)
		}
		copy(d[:], b)
		return d, nil
	default:
		return d, fmt.Errorf("hash %q is not sha256", s)
	}
	var b []byte
	var err error
	switch len(body) {
	case 52:
		b, err = nixbase32.DecodeString(body)
	case 64:
		b, err = hex.DecodeString(body)
	case 44:
		b, err = base64.StdEncoding.DecodeString(body)
	default:
		err = errors.New("wrong length")
	}
	if err != nil || len(b) != 32 {
		return d, fmt.Errorf("bad sha256 hash %q", s)
	}
	copy(d[:], b)
	return d, nil
}

// Parse reads a narinfo. Like Nix it ignores unknown keys and lines without
// ": ", takes each value verbatim after ": ", and defaults Compression to bzip2.
// It requires StorePath, URL, NarHash and a positive NarSize.
func Parse(r io.Reader) (*NarInfo, error) {
	n := &NarInfo{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	seen := map[string]bool{}
	bad := func(format string, a ...any) (*NarInfo, error) {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
	for sc.Scan() {
		line := sc.Text()
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			if k, ok := strings.CutSuffix(line, ":"); ok && k == "References" {
				val, key = "", k
			} else {
				continue
			}
		}
		if (key == "References" || key == "CA" || key == "StorePath" || key == "NarHash" || key == "NarSize" || key == "URL") && seen[key] {
			return bad("duplicate %s", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "StorePath":
			if _, err := ParseStorePath(val); err != nil {
				return bad("StorePath: %v", err)
			}
			n.StorePath = val
		case "URL":
			n.URL = val
		case "Compression":
			n.Compression = val
		case "FileHash":
			n.FileHash = val
		case "FileSize":
			n.FileSize, err = strconv.ParseUint(val, 10, 64)
			if err != nil {
				return bad("FileSize %q is not a number", val)
			}
		case "NarHash":
			n.NarHash, err = ParseHash(val)
			if err != nil {
				return bad("NarHash: %v", err)
			}
		case "NarSize":
			n.NarSize, err = strconv.ParseUint(val, 10, 64)
			if err != nil {
				return bad("NarSize %q is not a number", val)
			}
		case "References":
			for _, ref := range strings.Fields(val) {
				if !ValidBaseName(ref) {
					return bad("reference %q is not a store path basename", ref)
				}
				n.References = append(n.References, ref)
			}
		case "Deriver":
			n.Deriver = val
		case "System":
			n.System = val
		case "Sig":
			if _, err := signature.ParseSignature(val); err != nil {
				return bad("Sig %q: %v", val, err)
			}
			n.Sigs = append(n.Sigs, val)
		case "CA":
			n.CA = val
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read narinfo: %w", err)
	}
	switch {
	case n.StorePath == "":
		return bad("StorePath missing")
	case n.URL == "":
		return bad("URL missing")
	case !seen["NarHash"]:
		return bad("NarHash missing")
	case n.NarSize == 0:
		return bad("NarSize missing or zero")
	}
	if n.Compression == "" {
		n.Compression = "bzip2"
	}
	return n, nil
}

// String renders the narinfo with LF line endings, References sorted, and an
// empty References line written as "References: " as Nix expects.
func (n *NarInfo) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "StorePath: %s\n", n.StorePath)
	fmt.Fprintf(&b, "URL: %s\n", n.URL)
	fmt.Fprintf(&b, "Compression: %s\n", n.Compression)
	if n.FileHash != "" {
		fmt.Fprintf(&b, "FileHash: %s\n", n.FileHash)
	}
	if n.FileSize != 0 {
		fmt.Fprintf(&b, "FileSize: %d\n", n.FileSize)
	}
	fmt.Fprintf(&b, "NarHash: %s\n", n.NarHashString())
	fmt.Fprintf(&b, "NarSize: %d\n", n.NarSize)
	fmt.Fprintf(&b, "References: %s\n", strings.Join(n.SortedReferences(), " "))
	if n.Deriver != "" {
		fmt.Fprintf(&b, "Deriver: %s\n", n.Deriver)
	}
	if n.System != "" {
		fmt.Fprintf(&b, "System: %s\n", n.System)
	}
	for _, s := range n.Sigs {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	if n.CA != "" {
		fmt.Fprintf(&b, "CA: %s\n", n.CA)
	}
	return b.String()
}

// SortedReferences returns the references sorted, without duplicates.
func (n *NarInfo) SortedReferences() []string {
	refs := append([]string(nil), n.References...)
	sort.Strings(refs)
	out := refs[:0]
	for i, r := range refs {
		if i == 0 || r != refs[i-1] {
			out = append(out, r)
		}
	}
	return out
}

// Fingerprint is the string Nix signs: 1;path;narhash;narsize;sorted,full,refs.
func (n *NarInfo) Fingerprint() string {
	refs := n.SortedReferences()
	for i, r := range refs {
		refs[i] = StoreDir + "/" + r
	}
	return fmt.Sprintf("1;%s;%s;%d;%s", n.StorePath, n.NarHashString(), n.NarSize, strings.Join(refs, ","))
}

// PublicKeys is a set of trusted keys.
type PublicKeys []signature.PublicKey

// ParsePublicKeys parses name:base64 keys as given to --trusted-public-key.
func ParsePublicKeys(ss []string) (PublicKeys, error) {
	var keys PublicKeys
	for _, s := range ss {
		for _, f := range strings.Fields(s) {
			k, err := signature.ParsePublicKey(f)
			if err != nil {
				return nil, fmt.Errorf("trusted public key %q: want NAME:BASE64 as printed by nix-store --generate-binary-cache-key: %v", f, err)
			}
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// ErrUntrusted means no signature verifies against a trusted key.
var ErrUntrusted = errors.New("not signed by a trusted key")

// Verify succeeds if any signature's key name is trusted and verifies, as Nix does.
func (n *NarInfo) Verify(keys PublicKeys) error {
	fp := n.Fingerprint()
	for _, s := range n.Sigs {
		sig, err := signature.ParseSignature(s)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if k.Name == sig.Name && k.Verify(fp, sig) {
				return nil
			}
		}
	}
	if len(n.Sigs) == 0 {
		return fmt.Errorf("%w: the narinfo has no signature", ErrUntrusted)
	}
	names := make([]string, 0, len(n.Sigs))
	for _, s := range n.Sigs {
		name, _, _ := strings.Cut(s, ":")
		names = append(names, name)
	}
	return fmt.Errorf("%w: signed by %s", ErrUntrusted, strings.Join(names, ", "))
}

// LoadSecretKey parses a secret key file's contents (name:base64).
func LoadSecretKey(s string) (signature.SecretKey, error) {
	return signature.LoadSecretKey(strings.TrimSpace(s))
}

// Sign appends a signature by sk, replacing any earlier one with the same key name.
func (n *NarInfo) Sign(sk signature.SecretKey) error {
	sig, err := sk.Sign(nil, n.Fingerprint())
	if err != nil {
		return err
	}
	name := sk.ToPublicKey().Name
	kept := n.Sigs[:0:0]
	for _, s := range n.Sigs {
		if !strings.HasPrefix(s, name+":") {
			kept = append(kept, s)
		}
	}
	n.Sigs = append(kept, sig.String())
	return nil
}

// HashingReader computes SHA-256 and the byte count of what is read through it.
type HashingReader struct {
	r io.Reader
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n uint64
}

// NewHashingReader wraps r.
func NewHashingReader(r io.Reader) *HashingReader { return &HashingReader{r: r, h: sha256.New()} }

func (h *HashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += uint64(n)
	return n, err
}

// Sum returns the digest of everything read so far.
func (h *HashingReader) Sum() (d [32]byte) { copy(d[:], h.h.Sum(nil)); return d }

// Count returns the number of bytes read so far.
func (h *HashingReader) Count() uint64 { return h.n }

// PName returns the package name of a store path or basename: the name
// without its hash and without the version, which starts at the first "-"
// followed by a digit (as Nix's parseDrvName splits). "" if there is none.
func PName(p string) string { pname, _ := splitName(p); return pname }

// Version returns the version part of a store path or basename: what
// follows PName and its "-" ("" if there is none).
func Version(p string) string { _, version := splitName(p); return version }

// splitName splits a store path's name as Nix's parseDrvName does.
func splitName(p string) (pname, version string) {
	base := strings.TrimPrefix(p, StoreDir+"/")
	if len(base) <= HashPartLen+1 || base[HashPartLen] != '-' {
		return "", ""
	}
	name := base[HashPartLen+1:]
	for i := 0; i+1 < len(name); i++ {
		if name[i] == '-' && name[i+1] >= '0' && name[i+1] <= '9' {
			return name[:i], name[i+1:]
		}
	}
	return name, ""
}

// CompareVersions orders two versions as Nix's builtins.compareVersions
// does: -1, 0 or 1. Versions split into components at "." and "-" and
// between digits and other characters; numbers compare as numbers, "pre"
// comes before anything else, a missing component before a number, and
// other strings compare as strings (so 2.3pre1 < 2.3 < 2.3a < 2.3.1).
func CompareVersions(a, b string) int {
	for a != "" || b != "" {
		var ca, cb string
		ca, a = nextVersionComponent(a)
		cb, b = nextVersionComponent(b)
		if componentLess(ca, cb) {
			return -1
		}
		if componentLess(cb, ca) {
			return 1
		}
	}
	return 0
}

func nextVersionComponent(s string) (string, string) {
	i := 0
	for i < len(s) && (s[i] == '.' || s[i] == '-') {
		i++
	}
	s = s[i:]
	if s == "" {
		return "", ""
	}
	j := 0
	if isDigit(s[0]) {
		for j < len(s) && isDigit(s[j]) {
			j++
		}
	} else {
		for j < len(s) && !isDigit(s[j]) && s[j] != '.' && s[j] != '-' {
			j++
		}
	}
	return s[:j], s[j:]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func componentLess(c1, c2 string) bool {
	n1, ok1 := versionNumber(c1)
	n2, ok2 := versionNumber(c2)
	switch {
	case ok1 && ok2:
		return len(n1) < len(n2) || (len(n1) == len(n2) && n1 < n2)
	case c1 == "" && ok2:
		return true
	case c1 == "pre" && c2 != "pre":
		return true
	case c2 == "pre":
		return false
	case ok2: // 2.3a < 2.3.1
		return true
	case ok1:
		return false
	}
	return c1 < c2
}

// versionNumber returns a component of digits without leading zeros (any
// length: such numbers compare by length, then digit by digit).
func versionNumber(c string) (string, bool) {
	if c == "" || !isDigit(c[0]) {
		return "", false
	}
	return strings.TrimLeft(c, "0"), true
}
