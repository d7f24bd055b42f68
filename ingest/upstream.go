package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/narstore/narstore/internal/narinfo"
)

// Upstream is a Nix binary cache reached over http(s):// or file://.
type Upstream struct {
	base     *url.URL
	client   *http.Client
	attempts int
	delay    time.Duration
}

// UpstreamOptions tune an Upstream. The zero value is usable.
type UpstreamOptions struct {
	Client   *http.Client  // nil: a client with sane timeouts
	Attempts int           // tries per request on transient errors; 0 means 3
	Delay    time.Duration // first retry delay, doubled each time; 0 means 200ms
}

// NewUpstream parses a cache URL such as https://cache.nixos.org or file:///srv/cache.
func NewUpstream(raw string, o UpstreamOptions) (*Upstream, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") {
		return nil, fmt.Errorf("upstream %q: want an http://, https:// or file:// binary cache URL", raw)
	}
	if u.Scheme == "file" && u.Path == "" {
		return nil, fmt.Errorf("upstream %q: file:// URL needs an absolute path, like file:///srv/cache", raw)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			TLSHandshakeTimeout:   15 * time.Second,
			ForceAttemptHTTP2:     true,
		}}
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if o.Delay <= 0 {
		o.Delay = 200 * time.Millisecond
	}
	return &Upstream{base: u, client: o.Client, attempts: o.Attempts, delay: o.Delay}, nil
}

// String returns the cache URL.
func (u *Upstream) String() string { return strings.TrimSuffix(u.base.String(), "/") }

// ErrUpstreamTransient marks upstream failures worth retrying later (5xx,
// timeouts, broken connections).
var ErrUpstreamTransient = errors.New("upstream failed transiently")

// NarInfo fetches and parses <hashPart>.narinfo. A missing narinfo Is
// ErrNotFound; a malformed one Is narinfo.ErrMalformed.
func (u *Upstream) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	body, _, err := u.open(ctx, hashPart+".narinfo")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	ni, err := narinfo.Parse(io.LimitReader(body, 4<<20))
	if err != nil {
		return nil, err
	}
	if ni.HashPart() != hashPart {
		return nil, fmt.Errorf("%w: asked for %s, got StorePath %s", narinfo.ErrMalformed, hashPart, ni.StorePath)
	}
	return ni, nil
}

// NAR opens the NAR file a narinfo's URL names (resolved against the cache
// URL), in its upstream compression. The caller closes it.
func (u *Upstream) NAR(ctx context.Context, ni *narinfo.NarInfo) (io.ReadCloser, error) {
	if strings.HasPrefix(ni.URL, "/") {
		return nil, fmt.Errorf("%w: NAR URL %q starts with /", narinfo.ErrMalformed, ni.URL)
	}
	body, _, err := u.open(ctx, ni.URL)
	return body, err
}

// open GETs a path relative to the cache URL, retrying transient failures
// (5xx, 408, 429, network errors) with exponential backoff and jitter.
func (u *Upstream) open(ctx context.Context, rel string) (io.ReadCloser, int64, error) {
	ref, err := url.Parse(rel)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: bad URL %q", narinfo.ErrMalformed, rel)
	}
	target := u.base.ResolveReference(ref)
	if target.Scheme == "file" {
		return openFile(target)
	}
	var lastErr error
	delay := u.delay
	for attempt := 1; attempt <= u.attempts; attempt++ {
		if attempt > 1 {
			jittered := delay/2 + rand.N(delay/2+1)
			select {
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			case <-time.After(jittered):
			}
			delay *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
		if err != nil {
			return nil, 0, err
		}
		resp, err := u.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			lastErr = fmt.Errorf("GET %s: %v: %w", target, err, ErrUpstreamTransient)
			continue
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return resp.Body, resp.ContentLength, nil
		case resp.StatusCode == 404 || resp.StatusCode == 410 || resp.StatusCode == 403:
			resp.Body.Close()
			return nil, 0, fmt.Errorf("GET %s: %s: %w", target, resp.Status, ErrNotFound)
		case resp.StatusCode >= 500 || resp.StatusCode == 408 || resp.StatusCode == 429:
			resp.Body.Close()
			lastErr = fmt.Errorf("GET %s: %s (after %d attempts): %w", target, resp.Status, attempt, ErrUpstreamTransient)
		default:
			resp.Body.Close()
			return nil, 0, fmt.Errorf("GET %s: unexpected %s", target, resp.Status)
		}
	}
	return nil, 0, lastErr
}

func openFile(u *url.URL) (io.ReadCloser, int64, error) {
	p := filepath.FromSlash(u.Path)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("open %s: %w", p, ErrNotFound)
	}
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if st.IsDir() {
		f.Close()
		return nil, 0, fmt.Errorf("open %s: is a directory: %w", p, ErrNotFound)
	}
	return f, st.Size(), nil
}
