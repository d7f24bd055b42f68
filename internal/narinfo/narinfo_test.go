package narinfo_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/narstore/narstore/internal/narinfo"
)

// A real narinfo as served by cache.nixos.org, with its real signature.
const netTools = `StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432
URL: nar/1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d.nar.xz
Compression: xz
FileHash: sha256:1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d
FileSize: 114980
NarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6
NarSize: 464152
References: 7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27
Deriver: 10dx1q4ivjb115y3h90mipaaz533nr0d-net-tools-1.60_p20170221182432.drv
Sig: cache.nixos.org-1:sn5s/RrqEI+YG6/PjwdbPjcAC7rcta7sJU4mFOawGvJBLsWkyLtBrT2EuFt/LJjWkTZ+ZWOI9NTtjo/woMdvAg==
`

const cacheNixosOrgKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

func parse(t *testing.T, s string) *narinfo.NarInfo {
	t.Helper()
	n, err := narinfo.Parse(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRealSignatureVerifies(t *testing.T) {
	n := parse(t, netTools)
	keys, err := narinfo.ParsePublicKeys([]string{cacheNixosOrgKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Verify(keys); err != nil {
		t.Fatalf("real cache.nixos.org signature: %v", err)
	}
	if got, want := n.String(), netTools; got != want {
		t.Errorf("String() does not round-trip:\n%s\nwant\n%s", got, want)
	}
	n.NarSize++
	if err := n.Verify(keys); !errors.Is(err, narinfo.ErrUntrusted) {
		t.Fatalf("tampered NarSize verified: %v", err)
	}
}

func TestSignAndVerify(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	n := parse(t, netTools)
	n.Sigs = nil
	if err := n.Verify(narinfo.PublicKeys{pk}); !errors.Is(err, narinfo.ErrUntrusted) || !strings.Contains(err.Error(), "no signature") {
		t.Fatalf("unsigned: %v", err)
	}
	if err := n.Sign(sk); err != nil {
		t.Fatal(err)
	}
	if err := n.Sign(sk); err != nil { // re-signing replaces, never duplicates
		t.Fatal(err)
	}
	if len(n.Sigs) != 1 {
		t.Fatalf("%d sigs after signing twice", len(n.Sigs))
	}
	if err := n.Verify(narinfo.PublicKeys{pk}); err != nil {
		t.Fatal(err)
	}
	_, other, _ := signature.GenerateKeypair("other-1", nil)
	if err := n.Verify(narinfo.PublicKeys{other}); !errors.Is(err, narinfo.ErrUntrusted) || !strings.Contains(err.Error(), "test-1") {
		t.Fatalf("untrusted: %v", err)
	}
}

func TestFingerprintSortsReferences(t *testing.T) {
	n := parse(t, strings.Replace(netTools, "References: 7gx4", "References: zzzzkiv5m0i7d7qkixq2cwzbr10lvxwc-z 7gx4", 1))
	want := "1;/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432;sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6;464152;/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27,/nix/store/zzzzkiv5m0i7d7qkixq2cwzbr10lvxwc-z"
	if got := n.Fingerprint(); got != want {
		t.Fatalf("fingerprint\n%s\nwant\n%s", got, want)
	}
}

func TestParseLikeNix(t *testing.T) {
	n := parse(t, "StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x\nURL: nar/a.nar\nNarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6\nNarSize: 5\nSomeFutureKey: whatever\nno colon line\n")
	if n.Compression != "bzip2" {
		t.Errorf("missing Compression parsed as %q, want bzip2 as Nix does", n.Compression)
	}
	if !strings.Contains(n.String(), "References: \n") {
		t.Errorf("empty References must be written with a trailing space:\n%s", n.String())
	}
	hex := parse(t, strings.Replace(netTools, "sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6", "sha256:"+strings.Repeat("ab", 32), 1))
	if hex.NarHash[0] != 0xab {
		t.Errorf("base16 NarHash not parsed")
	}
}

func TestParseRejects(t *testing.T) {
	for name, text := range map[string]string{
		"NoStorePath":   strings.Replace(netTools, "StorePath:", "X:", 1),
		"BadStorePath":  strings.Replace(netTools, "/nix/store/00bgd", "/nix/store/EEEEE", 1),
		"NoURL":         strings.Replace(netTools, "URL:", "X:", 1),
		"NoNarHash":     strings.Replace(netTools, "NarHash:", "X:", 1),
		"BadNarHash":    strings.Replace(netTools, "sha256:0lxj", "md5:0lxj", 1),
		"ZeroNarSize":   strings.Replace(netTools, "NarSize: 464152", "NarSize: 0", 1),
		"BadNarSize":    strings.Replace(netTools, "NarSize: 464152", "NarSize: 46x", 1),
		"BadReference":  strings.Replace(netTools, "References: 7gx4", "References: /7gx4", 1),
		"BadSig":        strings.Replace(netTools, "Sig: cache.nixos.org-1:sn5s", "Sig: cache.nixos.org-1:!!", 1),
		"TwoReferences": netTools + "References: \n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := narinfo.Parse(strings.NewReader(text)); !errors.Is(err, narinfo.ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestPNameVersion(t *testing.T) {
	for in, want := range map[string][2]string{
		"/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432": {"net-tools", "1.60_p20170221182432"},
		"00bgd045z0d4icpbc2yyz4gx48ak44la-typescript-5.4.5":                          {"typescript", "5.4.5"},
		"00bgd045z0d4icpbc2yyz4gx48ak44la-nodejs-system":                             {"nodejs-system", ""},
		"00bgd045z0d4icpbc2yyz4gx48ak44la-esbuild-linux-x64-0.27.3":                  {"esbuild-linux-x64", "0.27.3"},
		"00bgd045z0d4icpbc2yyz4gx48ak44la-foo-2.0-bin":                               {"foo", "2.0-bin"},
		"short": {"", ""},
	} {
		if got := narinfo.PName(in); got != want[0] {
			t.Errorf("PName(%q) = %q, want %q", in, got, want[0])
		}
		if got := narinfo.Version(in); got != want[1] {
			t.Errorf("Version(%q) = %q, want %q", in, got, want[1])
		}
	}
}

// The cases of Nix's documentation of builtins.compareVersions, and more.
func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0", "2.3", -1}, {"2.1", "2.3", -1}, {"2.3", "2.3", 0}, {"2.5", "2.3", 1}, {"3.1", "2.3", 1},
		{"2.3.1", "2.3", 1}, {"2.3.1", "2.3a", 1}, {"2.3pre1", "2.3", -1}, {"2.3pre3", "2.3pre12", -1},
		{"2.3a", "2.3c", -1}, {"2.3pre1", "2.3c", -1}, {"2.3pre1", "2.3q", -1},
		{"5.10.0", "5.9.9", 1}, {"1.1.410", "1.1.411", -1}, {"007", "7", 0}, {"", "1", -1},
		{"12345678901234567890123", "12345678901234567890124", -1},
	} {
		if got := narinfo.CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := narinfo.CompareVersions(c.b, c.a); got != -c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}
