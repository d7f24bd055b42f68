// Package testservers starts throwaway real servers (MinIO, PostgreSQL, …) on
// loopback for integration tests. Each server is started once per test
// process on first use and stopped by StopAll, which the package's TestMain
// calls. A missing server binary skips the test with the reason, or fails it
// when testenv.RequireVar is set.
package testservers

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/testenv"
)

var (
	mu      sync.Mutex
	stops   []func()
	servers = map[string]*server{}
)

type server struct {
	err  error
	addr string
	dir  string
}

// StopAll stops every server this process started. Call it from TestMain.
func StopAll() {
	mu.Lock()
	defer mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	stops = nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func findBinary(name string, extra ...string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range extra {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func goBin(name string) string {
	gp := os.Getenv("GOPATH")
	if gp == "" {
		home, _ := os.UserHomeDir()
		gp = filepath.Join(home, "go")
	}
	return filepath.Join(gp, "bin", name)
}

// start runs cmd and registers its stop.
func start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	stops = append(stops, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return nil
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// MinIOServer describes a running MinIO.
type MinIOServer struct {
	Endpoint  string
	AccessKey string
	SecretKey string
}

// MinIO returns a MinIO server started for this process.
func MinIO(t testing.TB) MinIOServer {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	const user, pass = "narstoretest", "narstoretest-secret"
	s, ok := servers["minio"]
	if !ok {
		s = &server{}
		servers["minio"] = s
		bin := findBinary("minio", goBin("minio"))
		if bin == "" {
			s.err = fmt.Errorf("minio is not installed (go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c)")
		} else {
			s.err = startMinIO(s, bin, user, pass)
		}
	}
	if s.err != nil {
		testenv.Missing(t, s.err.Error())
	}
	return MinIOServer{Endpoint: "http://" + s.addr, AccessKey: user, SecretKey: pass}
}

func startMinIO(s *server, bin, user, pass string) error {
	dir, err := os.MkdirTemp("", "narstore-minio-")
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	cport, _ := freePort()
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "server", filepath.Join(dir, "data"), "--address", s.addr, "--console-address", fmt.Sprintf("127.0.0.1:%d", cport), "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+user, "MINIO_ROOT_PASSWORD="+pass, "MINIO_BROWSER=off")
	log, _ := os.Create(filepath.Join(dir, "minio.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := start(cmd); err != nil {
		return fmt.Errorf("start minio: %w", err)
	}
	stops = append(stops, func() { os.RemoveAll(dir) })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("minio did not become healthy in 30s (log in %s)", dir)
}

// Bucket creates a fresh, empty bucket on the MinIO server.
func (m MinIOServer) Bucket(t testing.TB) string {
	t.Helper()
	name := randomName("b-")
	var resp *http.Response
	// A MinIO that just went live may answer 503 for a moment while it
	// initializes.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodPut, m.Endpoint+"/"+name, nil)
		if err := signV4(req, m.AccessKey, m.SecretKey); err != nil {
			t.Fatal(err)
		}
		var err error
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("create bucket %s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			break
		}
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create bucket %s: %s", name, resp.Status)
	}
	return name
}

// Main runs a package's tests and stops the servers they started. Use it as
// func TestMain(m *testing.M) { testservers.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	StopAll()
	os.Exit(code)
}
