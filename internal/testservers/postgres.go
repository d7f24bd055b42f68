package testservers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/narstore/narstore/internal/testenv"
)

// Postgres returns the DSN of a fresh, empty database on a PostgreSQL
// cluster started for this process (trust auth, no fsync, loopback only).
func Postgres(t testing.TB) string {
	t.Helper()
	mu.Lock()
	s, ok := servers["postgres"]
	if !ok {
		s = &server{}
		servers["postgres"] = s
		s.err = startPostgres(s)
	}
	mu.Unlock()
	if s.err != nil {
		testenv.Missing(t, s.err.Error())
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", s.addr))
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer admin.Close(ctx)
	name := randomName("t_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.addr, name)
}

// asPostgres runs a PostgreSQL tool as the postgres user when we are root
// (initdb refuses root).
func asPostgres(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

func startPostgres(s *server) error {
	initdb := findBinary("initdb", "/usr/lib/postgresql/15/bin/initdb")
	if initdb == "" {
		return fmt.Errorf("PostgreSQL is not installed (initdb not found; apt-get install postgresql)")
	}
	bin := filepath.Dir(initdb)
	dir, err := os.MkdirTemp("", "narstore-pg-")
	if err != nil {
		return err
	}
	stops = append(stops, func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		if err := exec.Command("chown", "postgres:postgres", dir).Run(); err != nil {
			return fmt.Errorf("chown %s: %w", dir, err)
		}
	}
	os.Chmod(dir, 0o700)
	data := filepath.Join(dir, "data")
	if out, err := asPostgres(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8").CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	cmd := asPostgres(filepath.Join(bin, "postgres"), "-D", data, "-c", "listen_addresses=127.0.0.1", "-p", fmt.Sprint(port),
		"-k", dir, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300")
	log, _ := os.Create(filepath.Join(dir, "server.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := start(cmd); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&connect_timeout=1", s.addr))
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres did not accept connections in 30s (log: %s/server.log)", dir)
}
