package testservers

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/testenv"
)

// Redis returns the address of a Redis server started for this process
// (no persistence, loopback only).
func Redis(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	s, ok := servers["redis"]
	if !ok {
		s = &server{}
		servers["redis"] = s
		s.err = startRedis(s)
	}
	if s.err != nil {
		testenv.Missing(t, s.err.Error())
	}
	return s.addr
}

func startRedis(s *server) error {
	bin := findBinary("redis-server")
	if bin == "" {
		return fmt.Errorf("redis-server is not installed (apt-get install redis-server)")
	}
	dir, err := os.MkdirTemp("", "narstore-redis-")
	if err != nil {
		return err
	}
	stops = append(stops, func() { os.RemoveAll(dir) })
	port, err := freePort()
	if err != nil {
		return err
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", fmt.Sprint(port), "--save", "", "--appendonly", "no", "--dir", dir)
	log, _ := os.Create(filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := start(cmd); err != nil {
		return fmt.Errorf("start redis: %w", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("redis did not listen in 10s (log in %s)", dir)
}
