package testservers

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver, to wait for readiness

	"github.com/narstore/narstore/internal/testenv"
)

// MariaDB returns a DSN (go-sql-driver form) for a MariaDB server started for
// this process, with grant tables skipped (any user, no password).
func MariaDB(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	s, ok := servers["mariadb"]
	if !ok {
		s = &server{}
		servers["mariadb"] = s
		s.err = startMariaDB(s)
	}
	if s.err != nil {
		testenv.Missing(t, s.err.Error())
	}
	return fmt.Sprintf("root@tcp(%s)/", s.addr)
}

func startMariaDB(s *server) error {
	bin := findBinary("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
	install := findBinary("mariadb-install-db", "/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db")
	if bin == "" || install == "" {
		return fmt.Errorf("MariaDB is not installed (apt-get install mariadb-server)")
	}
	dir, err := os.MkdirTemp("", "narstore-mariadb-")
	if err != nil {
		return err
	}
	stops = append(stops, func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	user := []string{}
	if os.Geteuid() == 0 {
		user = []string{"--user=root"}
	}
	initArgs := append([]string{"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal", "--skip-test-db"}, user...)
	if out, err := exec.Command(install, initArgs...).CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb-install-db: %v: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--no-defaults", "--datadir=" + data, "--socket=" + filepath.Join(dir, "sock"), "--port=" + fmt.Sprint(port),
		"--bind-address=127.0.0.1", "--skip-grant-tables", "--pid-file=" + filepath.Join(dir, "pid"), "--innodb-buffer-pool-size=16M"}, user...)
	cmd := exec.Command(bin, args...)
	log, _ := os.Create(filepath.Join(dir, "server.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := start(cmd); err != nil {
		return fmt.Errorf("start mariadb: %w", err)
	}
	db, _ := sql.Open("mysql", fmt.Sprintf("root@tcp(%s)/", s.addr))
	defer db.Close()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if db.Ping() == nil {
			return nil
		}
	}
	return fmt.Errorf("mariadb did not accept connections in 30s (log in %s)", dir)
}
