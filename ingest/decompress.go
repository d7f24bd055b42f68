package ingest

import (
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// ErrUnsupportedCompression means a narinfo names a compression narstore cannot decode.
var ErrUnsupportedCompression = errors.New("unsupported compression")

// ErrDecompress marks a corrupt or truncated compressed stream.
var ErrDecompress = errors.New("corrupt or truncated compressed stream")

// XZDecoder picks the xz implementation.
type XZDecoder string

const (
	// XZAuto uses liblzma through the xz program when it is on PATH (about
	// twice as fast), else the pure-Go decoder.
	XZAuto XZDecoder = "auto"
	XZExec XZDecoder = "exec" // always the xz program
	XZGo   XZDecoder = "go"   // always github.com/ulikunitz/xz
)

var xzPath = sync.OnceValue(func() string { p, _ := exec.LookPath("xz"); return p })

// CompressionOfFile returns the compression a NAR file name implies, as Nix
// names them: .nar, .nar.xz, .nar.zst, .nar.bz2 (false for anything else).
func CompressionOfFile(name string) (string, bool) {
	for _, x := range []struct{ ext, comp string }{{".nar", "none"}, {".nar.xz", "xz"}, {".nar.zst", "zstd"}, {".nar.bz2", "bzip2"}} {
		if strings.HasSuffix(name, x.ext) {
			return x.comp, true
		}
	}
	return "", false
}

// Decompress wraps r in a decoder for compression (none, xz, zstd, bzip2).
// Errors from the decoder wrap ErrDecompress. Closing the result does not
// close r.
func Decompress(r io.Reader, compression string, xzImpl XZDecoder) (io.ReadCloser, error) {
	switch compression {
	case "none", "":
		return io.NopCloser(r), nil
	case "xz":
		if xzImpl == XZExec || (xzImpl != XZGo && xzPath() != "") {
			return execDecoder(r, "xz", "-dc", "--single-stream")
		}
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %v: %w", err, ErrDecompress)
		}
		return io.NopCloser(&errWrapReader{r: xr, what: "xz"}), nil
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false))
		if err != nil {
			return nil, fmt.Errorf("zstd: %v: %w", err, ErrDecompress)
		}
		return &zstdCloser{errWrapReader{r: zr, what: "zstd"}, zr}, nil
	case "bzip2":
		return io.NopCloser(&errWrapReader{r: bzip2.NewReader(r), what: "bzip2"}), nil
	}
	return nil, fmt.Errorf("%w %q (supported: none, xz, zstd, bzip2)", ErrUnsupportedCompression, compression)
}

type zstdCloser struct {
	errWrapReader
	d *zstd.Decoder
}

func (z *zstdCloser) Close() error { z.d.Close(); return nil }

// errWrapReader marks decoder errors (not EOF) with ErrDecompress.
type errWrapReader struct {
	r    io.Reader
	what string
}

func (e *errWrapReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		if errors.Is(err, ErrDecompress) || errors.Is(err, ErrUpstreamTransient) {
			return n, err
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return n, fmt.Errorf("%s: stream ends early: %w", e.what, ErrDecompress)
		}
		return n, fmt.Errorf("%s: %v: %w", e.what, err, ErrDecompress)
	}
	return n, err
}

// execDecoder runs an external decompressor with r on stdin.
//
// Both pipes are 1 MiB instead of 64 KiB. Compressed input is fed by a
// goroutine that shares the Go scheduler with chunking and compression; with
// a 64 KiB pipe the decoder ran dry whenever that goroutine waited a few
// milliseconds for a P, and decoding and ingest took turns instead of running
// side by side.
func execDecoder(r io.Reader, name string, args ...string) (io.ReadCloser, error) {
	cmd := exec.Command(name, args...)
	src := &srcErrReader{r: r}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if f, ok := out.(*os.File); ok {
		setPipeSize(f, 1<<20)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	setPipeSize(inW, 1<<20)
	cmd.Stdin = inR
	if err := cmd.Start(); err != nil {
		inR.Close()
		inW.Close()
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	inR.Close() // the child has its copy
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		// A source error is kept by src and reported by Read; a write error
		// means the decoder has exited, which Read reports too.
		io.Copy(inW, src)
		inW.Close()
	}()
	return &execReader{cmd: cmd, out: out, stderr: &stderr, name: name, src: src, fed: fed}, nil
}

// setPipeSize grows a pipe's buffer. It goes through SyscallConn, not Fd:
// Fd would switch the pipe to blocking mode, and with GOMAXPROCS=1 a
// goroutine blocked in a pipe read or write keeps the only P until sysmon
// takes it back, stalling chunking and compression meanwhile.
func setPipeSize(f *os.File, size int) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size) })
	}
}

// srcErrReader remembers the error the source gave (a broken upstream
// connection), so it can be reported instead of the decoder's complaint.
type srcErrReader struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (s *srcErrReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
	return n, err
}

type execReader struct {
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr *bytes.Buffer
	name   string
	src    *srcErrReader
	fed    chan struct{} // closed when the feeding goroutine has returned
	done   bool
	err    error
}

// feedGrace bounds how long the end of a stream waits for the goroutine
// feeding the decoder to notice: it is normally at EOF or about to get EPIPE,
// but a stalled upstream must not hold a finished NAR.
const feedGrace = 2 * time.Second

func (e *execReader) Read(p []byte) (int, error) {
	if e.done {
		return 0, e.err
	}
	n, err := e.out.Read(p)
	if err == io.EOF {
		e.done = true
		werr := e.cmd.Wait()
		// Let the feeder finish, so callers see the source fully consumed
		// (its byte count) before they see EOF, as exec's own stdin copy did.
		select {
		case <-e.fed:
		case <-time.After(feedGrace):
		}
		if werr != nil {
			e.src.mu.Lock()
			srcErr := e.src.err
			e.src.mu.Unlock()
			if srcErr != nil {
				e.err = srcErr
			} else {
				e.err = fmt.Errorf("%s: %s: %w", e.name, bytes.TrimSpace(e.stderr.Bytes()), ErrDecompress)
			}
			return n, e.err
		}
		e.err = io.EOF
	} else if err != nil {
		return n, fmt.Errorf("%s: %w", e.name, err)
	}
	return n, err
}

func (e *execReader) Close() error {
	if !e.done {
		e.done = true
		e.err = errors.New("closed")
		e.cmd.Process.Kill()
		e.cmd.Wait()
	}
	return nil
}
