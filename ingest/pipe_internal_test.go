package ingest

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// The xz program's pipes must stay in the runtime's non-blocking mode (a
// goroutine blocked in a pipe syscall holds its P: with one core, chunking
// and compression stop while it waits; measured 77-80% of xz's rate with
// blocking pipes, 89-97% without) and must have the larger buffer.
func TestExecDecoderPipesStayNonBlocking(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz program not installed")
	}
	cmd := exec.Command("xz", "-c")
	cmd.Stdin = bytes.NewReader([]byte("narstore"))
	xzData, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := execDecoder(bytes.NewReader(xzData), "xz", "-dc")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out, ok := rc.(*execReader).out.(*os.File)
	if !ok {
		t.Fatalf("decoder output is %T, not a pipe", rc.(*execReader).out)
	}
	sc, err := out.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags, size int
	var ferr, serr error
	sc.Control(func(fd uintptr) {
		flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0)
		size, serr = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
	})
	if ferr != nil || serr != nil {
		t.Fatal(ferr, serr)
	}
	if flags&unix.O_NONBLOCK == 0 {
		t.Error("decoder output pipe is in blocking mode")
	}
	if size < 1<<20 {
		t.Errorf("decoder output pipe holds %d bytes, want 1 MiB", size)
	}
	if got, err := io.ReadAll(rc); err != nil || string(got) != "narstore" {
		t.Fatalf("decoded %q, %v", got, err)
	}
}
