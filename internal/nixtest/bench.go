package nixtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/nix-community/go-nix/pkg/nar"
)

// BenchNAR returns a real NAR of about 120 MB for benchmarks: the Go
// toolchain's binaries (pkg/tool, bin) and some of its sources, so both
// machine code and text. Built once per process.
var BenchNAR = sync.OnceValue(func() []byte {
	dir, err := os.MkdirTemp("", "benchnar")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	goroot := runtime.GOROOT()
	for _, sub := range []string{"pkg/tool", "bin", "src/net", "src/crypto", "src/cmd/compile"} {
		if err := exec.Command("cp", "-a", filepath.Join(goroot, sub), filepath.Join(dir, filepath.Base(sub))).Run(); err != nil {
			panic(err)
		}
	}
	var b bytes.Buffer
	if err := nar.DumpPath(&b, dir); err != nil {
		panic(err)
	}
	return b.Bytes()
})
