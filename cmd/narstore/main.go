// Command narstore stores Nix binary cache NARs as deduplicated chunks and
// serves them back to Nix clients.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/store"
)

// exitError carries an exit code; its message has already been printed
// when msg is empty.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

type runFunc func(ctx context.Context, env *cmdEnv) error

type command struct {
	name    string
	usage   string
	summary string
	setup   func(fs *flag.FlagSet) runFunc
}

var commands = []command{
	{"ingest", "ingest [flags] [STORE-PATH...]", "fetch NARs from an upstream binary cache into the chunk store", setupIngest},
	{"stats", "stats [--json]", "show stored NARs, chunks, bytes and dedup ratios", setupStats},
	{"verify", "verify", "re-read every stored NAR from its chunks and check its NarHash", setupVerify},
	{"bench", "bench --bumps DIR1,DIR2,... --out OUTDIR [--presets ...] [--levels ...]", "sweep chunker presets and zstd levels over channel bumps: stored bytes, objects, costs, throughput", setupBench},
	{"recompress", "recompress [--level 19] [--jobs N]", "rewrite stored chunks at a stronger zstd level in the background, plain ones that resemble others as deltas of them (same bytes, smaller blobs)", setupRecompress},
	{"migrate", "migrate --to-database-url URL --to-storage URL", "copy this cache (index and chunks) into another, e.g. SQLite + directory to PostgreSQL + S3; resumable", setupMigrate},
	{"serve", "serve [flags]", "serve the store as a Nix binary cache (substituter), optionally pulling through from an upstream", setupServe},
}

// common holds the settings every command has.
type common struct {
	data       string
	database   string
	storage    string
	configFile string
	logLevel   string
	printCfg   bool
	s3Key      string
	s3Secret   string
}

// cmdEnv is what a running command gets.
type cmdEnv struct {
	common
	fs     *flag.FlagSet
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
	args   []string
}

func addCommon(fs *flag.FlagSet, c *common) {
	fs.StringVar(&c.data, "data", "./narstore-data", "directory holding the embedded index (index.db) and chunk store (chunks/)")
	fs.StringVar(&c.database, "database-url", "", "index database: a SQLite file path or postgres://user@host/db (default: DATA/index.db)")
	fs.StringVar(&c.storage, "storage", "", "chunk store: a directory or s3://bucket/prefix?endpoint=…&region=…&path-style=true; S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the AWS chain (default: DATA/chunks)")
	fs.StringVar(&c.s3Key, "s3-access-key-id", "", "S3 access key for s3:// storage (default: AWS_ACCESS_KEY_ID or the AWS credential chain)")
	fs.StringVar(&c.s3Secret, "s3-secret-access-key", "", "S3 secret key, with --s3-access-key-id")
	fs.StringVar(&c.configFile, "config", "", "optional config `FILE` of \"key = value\" lines (keys are flag names); flags and NARSTORE_* variables override it")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.BoolVar(&c.printCfg, "print-config", false, "print the effective settings (secrets redacted) and exit")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "narstore:", ee.msg)
		}
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "narstore:", err)
		os.Exit(1)
	}
}

func topUsage(w io.Writer) {
	fmt.Fprintf(w, "narstore stores Nix binary cache NARs as deduplicated chunks and serves them to Nix.\n\nUsage:\n  narstore <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'narstore <command> --help' for its settings. Every flag can also be set as a\nNARSTORE_<FLAG> environment variable (e.g. NARSTORE_DATA) or in --config FILE.\n")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		topUsage(stdout)
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return nil
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		topUsage(stderr)
		return &exitError{code: 2, msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := &cmdEnv{fs: fs, stdout: stdout, stderr: stderr}
	addCommon(fs, &env.common)
	runCmd := cmd.setup(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: narstore %s\n\n%s.\n\nSettings (flag, or NARSTORE_<NAME> in the environment, or name = value in --config):\n", cmd.usage, capitalize(cmd.summary))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{code: 2}
	}
	cfgFile := env.configFile
	if cfgFile == "" {
		cfgFile = os.Getenv(envName("config"))
	}
	if err := resolve(fs, cfgFile); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if env.printCfg {
		printConfig(stderr, fs)
		return nil
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(env.logLevel)); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--log-level %q: want debug, info, warn or error", env.logLevel)}
	}
	env.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	env.args = fs.Args()
	return runCmd(ctx, env)
}

func allFlagNames() map[string]bool {
	names := map[string]bool{}
	for _, c := range commands {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		var cm common
		addCommon(fs, &cm)
		c.setup(fs)
		fs.VisitAll(func(f *flag.Flag) { names[f.Name] = true })
	}
	return names
}

func capitalize(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

// zstdLevelFlag registers --zstd-level with a per-command default: batch
// ingest compresses harder than the serve hot path (see README, bench).
func zstdLevelFlag(fs *flag.FlagSet, def int) *int {
	return fs.Int("zstd-level", def, "zstd level (1-22) for new chunks; higher stores fewer bytes for more ingest CPU, read speed is unchanged")
}

// openData opens the index (--database-url, default SQLite under --data) and
// the chunk store (--storage, default a directory under --data).
// level is the zstd level for new chunks (0: store.DefaultLevel).
func (e *cmdEnv) openData(create bool, level int) (index.Index, *store.Chunks, error) {
	return e.openBackends(e.database, e.storage, create, level)
}

// openBackends opens an index and chunk store; database and storage default
// to DATA/index.db and DATA/chunks.
func (e *cmdEnv) openBackends(database, storage string, create bool, level int) (index.Index, *store.Chunks, error) {
	data := e.data
	ctx := context.Background()
	var ix index.Index
	switch db := database; {
	case strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://"):
		pg, err := index.OpenPostgres(ctx, db, nil)
		if err != nil {
			return nil, nil, err
		}
		ix = pg
	default:
		if db == "" {
			db = filepath.Join(data, "index.db")
		}
		if !create {
			if _, err := os.Stat(db); err != nil {
				return nil, nil, fmt.Errorf("no narstore index at %s: pass --data or --database-url, or ingest something first", db)
			}
		}
		if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
			return nil, nil, fmt.Errorf("index directory: %w", err)
		}
		lite, err := index.OpenSQLite(db, nil)
		if err != nil {
			return nil, nil, err
		}
		ix = lite
	}
	var st store.Store
	switch {
	case strings.HasPrefix(storage, "s3://"):
		o, err := store.ParseS3URL(storage)
		if err != nil {
			ix.Close()
			return nil, nil, err
		}
		if (e.s3Key == "") != (e.s3Secret == "") {
			ix.Close()
			return nil, nil, &exitError{code: 2, msg: "--s3-access-key-id and --s3-secret-access-key go together"}
		}
		o.AccessKey, o.SecretKey = e.s3Key, e.s3Secret
		s3, err := store.OpenS3(ctx, o)
		if err != nil {
			ix.Close()
			return nil, nil, err
		}
		st = s3
	default:
		dir := storage
		if dir == "" {
			dir = filepath.Join(data, "chunks")
		}
		d, err := store.OpenDir(dir)
		if err != nil {
			ix.Close()
			return nil, nil, err
		}
		st = d
	}
	chunks, err := store.NewChunks(st, store.ChunksOptions{Level: level})
	if err != nil {
		ix.Close()
		return nil, nil, fmt.Errorf("--zstd-level: %w", err)
	}
	return ix, chunks, nil
}

// openWithLocks is openData plus the cross-instance locker; closeAll closes both.
func (e *cmdEnv) openWithLocks(ctx context.Context, level int, locks *lockConfig) (index.Index, *store.Chunks, lock.Locker, func(), error) {
	ix, chunks, err := e.openData(true, level)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	locker, closeLocker, err := locks.open(ctx, e.database)
	if err != nil {
		ix.Close()
		return nil, nil, nil, nil, err
	}
	return ix, chunks, locker, func() { closeLocker(); ix.Close() }, nil
}

func presetFlag(fs *flag.FlagSet) *string {
	return fs.String("preset", chunker.DefaultPreset, "chunker preset for new NARs, one of: "+strings.Join(chunker.PresetNames(), ", "))
}
