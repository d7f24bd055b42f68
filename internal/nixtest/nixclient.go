package nixtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/narstore/narstore/internal/testenv"
)

// Nix drives the real Nix client (Debian's nix-bin) with chroot stores under
// a temp dir, a private HOME (Nix caches narinfos per user) and no default
// substituters.
type Nix struct {
	Dir        string
	SecretKey  string // path of a secret key file
	PublicKey  string // the public key, NAME:BASE64
	SourceDir  string // chroot store that holds paths made by Add
	extraEnv   []string
	nixStore   string
	nixCommand string
}

// NewNix returns a Nix, skipping (or failing under CI) if nix-bin is missing.
func NewNix(t testing.TB) *Nix {
	t.Helper()
	ns := testenv.LookPath(t, "nix-store", "apt-get install nix-bin")
	n := &Nix{Dir: t.TempDir(), nixStore: ns, nixCommand: filepath.Join(filepath.Dir(ns), "nix")}
	home := filepath.Join(n.Dir, "home")
	os.MkdirAll(home, 0o755)
	n.extraEnv = []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "NIX_CONFIG="}
	n.SecretKey = filepath.Join(n.Dir, "sk")
	pk := filepath.Join(n.Dir, "pk")
	n.Run(t, n.nixStore, "--generate-binary-cache-key", "nix-test-1", n.SecretKey, pk)
	b, _ := os.ReadFile(pk)
	n.PublicKey = strings.TrimSpace(string(b))
	n.SourceDir = filepath.Join(n.Dir, "src")
	return n
}

// Command returns an exec.Cmd for a nix program with the private environment.
func (n *Nix) Command(name string, args ...string) *exec.Cmd {
	switch name {
	case "nix-store":
		name = n.nixStore
	case "nix":
		name = n.nixCommand
		args = append([]string{"--extra-experimental-features", "nix-command"}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), n.extraEnv...)
	return cmd
}

// Run runs a nix program and returns its trimmed stdout; it fails the test on error.
func (n *Nix) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := n.Command(name, args...)
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, msg)
	}
	return strings.TrimSpace(string(out))
}

// Add adds a real directory or file to the source store and returns its store path.
func (n *Nix) Add(t testing.TB, path string) string {
	t.Helper()
	return n.Run(t, "nix-store", "--store", n.SourceDir, "--add", path)
}

// FileCache writes paths (with their closures) from the source store into a
// new signed file:// binary cache, as Hydra does, and returns its directory.
func (n *Nix) FileCache(t testing.TB, compression string, paths ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache")
	n.Run(t, "nix", append([]string{"copy", "--store", n.SourceDir, "--to",
		"file://" + dir + "?secret-key=" + n.SecretKey + "&compression=" + compression}, paths...)...)
	return dir
}
