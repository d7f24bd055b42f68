package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/reassembly"
)

func setupServe(fs *flag.FlagSet) runFunc {
	listen := fs.String("listen", "127.0.0.1:5000", "address to serve the binary cache on")
	priority := fs.Int("priority", 30, "nix-cache-info Priority (lower wins; cache.nixos.org is 40)")
	mass := fs.Bool("want-mass-query", true, "nix-cache-info WantMassQuery")
	secretKeyFile := fs.String("secret-key-file", "", "sign served narinfos with this key (from nix-store --generate-binary-cache-key); upstream signatures are always kept")
	upstream := fs.String("upstream", "", "pull-through: fetch and ingest paths missing here from this binary cache URL")
	var keys stringList
	fs.Var(&keys, "trusted-public-key", "trusted upstream key NAME:BASE64 (repeatable)")
	allowUntrusted := fs.Bool("allow-untrusted", false, "pull-through: accept upstream narinfos that no trusted key signed")
	negTTL := fs.Duration("negative-ttl", time.Minute, "pull-through: how long an upstream miss is remembered")
	preset := presetFlag(fs)
	locks := lockFlags(fs)
	level := zstdLevelFlag(fs, 1)
	dedup := dedupFlags(fs, false, "pull-through and uploads: normalize reference hashes before chunking (recorded per NAR)", "pull-through: delta-encode new chunks against the package's previous version (more CPU on the request path)")
	readAhead := fs.Int("read-ahead", reassembly.DefaultReadAhead, "chunks fetched ahead of each NAR response")
	cacheMB := fs.Int("chunk-cache-mb", 256, "in-memory cache of hot chunks, in MB (0 disables)")
	tzstd := fs.Bool("transport-zstd", true, "send NARs with Content-Encoding: zstd to clients whose Accept-Encoding asks for it")
	uploads := fs.Bool("allow-uploads", false, "accept nix copy --to http://… uploads (PUT)")
	user := fs.String("upload-user", "", "HTTP Basic user for uploads (with --upload-password)")
	pass := fs.String("upload-password", "", "HTTP Basic password for uploads")
	token := fs.String("upload-token", "", "bearer token for uploads (also accepted as the Basic password)")
	anon := fs.Bool("allow-anonymous-uploads", false, "allow uploads without credentials")
	maxUpload := fs.Uint64("max-upload-size", 64<<30, "largest uploaded NAR, uncompressed bytes")
	shutdown := fs.Duration("shutdown-timeout", 5*time.Minute, "on SIGTERM, how long in-flight downloads may take to finish")
	drain := fs.Duration("drain-delay", 0, "on SIGTERM, first answer /healthz with 503 for this long while still serving, so a load balancer stops routing here before the listener closes")
	return func(ctx context.Context, env *cmdEnv) error {
		if err := dedup.check(); err != nil {
			return err
		}
		p, err := chunker.LookupPreset(*preset)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		var sk *signature.SecretKey
		if *secretKeyFile != "" {
			b, err := os.ReadFile(*secretKeyFile)
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("--secret-key-file: %v", err)}
			}
			k, err := narinfo.LoadSecretKey(string(b))
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("--secret-key-file %s: %v (make one with nix-store --generate-binary-cache-key)", *secretKeyFile, err)}
			}
			sk = &k
		}
		if *uploads && *token == "" && *user == "" && !*anon {
			return &exitError{code: 2, msg: "--allow-uploads needs --upload-token or --upload-user/--upload-password (or --allow-anonymous-uploads)"}
		}
		if (*user == "") != (*pass == "") {
			return &exitError{code: 2, msg: "--upload-user and --upload-password go together"}
		}
		pk, err := narinfo.ParsePublicKeys(keys)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		var up *ingest.Upstream
		if *upstream != "" {
			if len(pk) == 0 && !*allowUntrusted {
				return &exitError{code: 2, msg: "--upstream needs --trusted-public-key NAME:KEY for the upstream's signing key (or --allow-untrusted)"}
			}
			if up, err = ingest.NewUpstream(*upstream, ingest.UpstreamOptions{}); err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
		}
		ix, chunks, locker, closeAll, err := env.openWithLocks(ctx, *level, locks)
		if err != nil {
			return err
		}
		defer closeAll()
		in, err := ingest.New(up, ix, chunks, dedup.options(ingest.Options{Preset: p, Keys: pk, AllowUntrusted: *allowUntrusted, Logger: env.log,
			Locker: locker, LockTTL: locks.ttl, TempDir: spillDir(env.data)}))
		if err != nil {
			return err
		}
		spoolDir := filepath.Join(env.data, "spool")
		if err := os.MkdirAll(spoolDir, 0o755); err != nil {
			return err
		}
		cache := reassembly.NewCache(chunks, int64(*cacheMB)<<20)
		srv := reassembly.NewServer(ix, cache, in, reassembly.Options{
			Priority: *priority, WantMassQuery: *mass, SecretKey: sk, NegativeTTL: *negTTL, ReadAhead: *readAhead,
			TransportZstd: *tzstd, Uploads: *uploads, UploadUser: *user, UploadPassword: *pass, UploadToken: *token,
			MaxUploadSize: *maxUpload, SpoolDir: spoolDir, Logger: env.log,
		})
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("--listen %s: %w", *listen, err)
		}
		hs := &http.Server{
			Handler:           srv.Handler(),
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			// No WriteTimeout: Nix reads slowly on purpose.
		}
		fmt.Fprintf(env.stderr, "narstore: serving %s on http://%s\n", env.data, ln.Addr())
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		if *drain > 0 {
			fmt.Fprintf(env.stderr, "narstore: draining for %s (/healthz answers 503)\n", *drain)
			srv.Drain()
			select {
			case err := <-errc:
				return err
			case <-time.After(*drain):
			}
		}
		fmt.Fprintf(env.stderr, "narstore: shutting down, letting in-flight downloads finish (up to %s)\n", *shutdown)
		sctx, cancel := context.WithTimeout(context.Background(), *shutdown)
		defer cancel()
		err = hs.Shutdown(sctx)
		srv.Close(sctx)
		if errors.Is(err, context.DeadlineExceeded) {
			hs.Close()
		}
		<-errc
		return nil
	}
}
