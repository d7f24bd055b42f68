package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/narstore/narstore/chunker"
)

// S3Options locate a bucket. Credentials come from AccessKey/SecretKey when
// set, else from the standard AWS chain (AWS_ACCESS_KEY_ID, profiles, IMDS…).
type S3Options struct {
	Bucket      string
	Prefix      string // key prefix, e.g. "cache1/"; chunks live under PREFIX/chunks/ab/cd/<id>
	Endpoint    string // e.g. http://127.0.0.1:9100 for MinIO; "" for AWS
	Region      string // default us-east-1
	PathStyle   bool   // needed by MinIO and most non-AWS servers
	AccessKey   string
	SecretKey   string
	MaxAttempts int // per request, with exponential backoff; 0 means 5
}

// ParseS3URL reads s3://bucket/prefix?endpoint=…&region=…&path-style=true.
func ParseS3URL(raw string) (S3Options, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return S3Options{}, fmt.Errorf("storage %q: want s3://bucket/prefix?endpoint=http://host:port&region=us-east-1&path-style=true", raw)
	}
	o := S3Options{Bucket: u.Host, Prefix: strings.TrimPrefix(u.Path, "/"), Endpoint: u.Query().Get("endpoint"), Region: u.Query().Get("region")}
	if ps := u.Query().Get("path-style"); ps != "" {
		if o.PathStyle, err = strconv.ParseBool(ps); err != nil {
			return S3Options{}, fmt.Errorf("storage %q: path-style=%q is not true or false", raw, ps)
		}
	}
	return o, nil
}

// S3 is a Store on an S3-compatible bucket, one object per chunk.
type S3 struct {
	client *s3.Client
	bucket string
	prefix string
	reqs   *requestCounter
}

// S3Requests counts HTTP requests sent to S3, retries included.
type S3Requests struct {
	Get, Put, Head, List, Delete, Other int64
}

// Total is the sum of all requests.
func (r S3Requests) Total() int64 { return r.Get + r.Put + r.Head + r.List + r.Delete + r.Other }

// Add returns r+o, kind by kind.
func (r S3Requests) Add(o S3Requests) S3Requests {
	return S3Requests{r.Get + o.Get, r.Put + o.Put, r.Head + o.Head, r.List + o.List, r.Delete + o.Delete, r.Other + o.Other}
}

// Sub returns r-o, kind by kind: the requests between two readings.
func (r S3Requests) Sub(o S3Requests) S3Requests {
	return S3Requests{r.Get - o.Get, r.Put - o.Put, r.Head - o.Head, r.List - o.List, r.Delete - o.Delete, r.Other - o.Other}
}

// Requests returns how many requests this store has sent so far.
func (s *S3) Requests() S3Requests {
	c := s.reqs
	return S3Requests{Get: c.get.Load(), Put: c.put.Load(), Head: c.head.Load(), List: c.list.Load(), Delete: c.del.Load(), Other: c.other.Load()}
}

type requestCounter struct {
	next                             aws.HTTPClient
	get, put, head, list, del, other atomic.Int64
}

func (c *requestCounter) Do(r *http.Request) (*http.Response, error) {
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Has("list-type"):
		c.list.Add(1)
	case r.Method == http.MethodGet:
		c.get.Add(1)
	case r.Method == http.MethodPut:
		c.put.Add(1)
	case r.Method == http.MethodHead:
		c.head.Add(1)
	case r.Method == http.MethodDelete:
		c.del.Add(1)
	default:
		c.other.Add(1)
	}
	return c.next.Do(r)
}

var (
	_ Store    = (*S3)(nil)
	_ Replacer = (*S3)(nil)
)

// OpenS3 connects and checks that the bucket is reachable.
func OpenS3(ctx context.Context, o S3Options) (*S3, error) {
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(o.Region),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) { so.MaxAttempts = o.MaxAttempts })
		}),
	}
	if o.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(o.AccessKey, o.SecretKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	reqs := &requestCounter{next: awshttp.NewBuildableClient()}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.HTTPClient = reqs
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
	})
	prefix := strings.Trim(o.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	s := &S3{client: client, bucket: o.Bucket, prefix: prefix, reqs: reqs}
	if _, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(o.Bucket)}); err != nil {
		return nil, fmt.Errorf("s3 bucket %q at %s is not reachable (check the bucket name, endpoint, region and credentials): %w", o.Bucket, orAWS(o.Endpoint), err)
	}
	return s, nil
}

func orAWS(endpoint string) string {
	if endpoint == "" {
		return "AWS"
	}
	return endpoint
}

func (s *S3) key(id chunker.ID) string {
	h := id.String()
	return s.prefix + "chunks/" + h[:2] + "/" + h[2:4] + "/" + h
}

func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var api smithy.APIError
	return errors.As(err, &nsk) || errors.As(err, &nf) || (errors.As(err, &api) && (api.ErrorCode() == "NoSuchKey" || api.ErrorCode() == "NotFound"))
}

// Get implements Store.
func (s *S3) Get(ctx context.Context, id chunker.ID) (io.ReadCloser, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(id))})
	if isNotFound(err) {
		return nil, fmt.Errorf("get chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	return out.Body, nil
}

// Has implements Store.
func (s *S3) Has(ctx context.Context, id chunker.ID) (bool, error) {
	_, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(id))})
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat chunk %s: %w", id, err)
	}
	return true, nil
}

// Put implements Store. A PUT of an object is atomic in S3; writing the same
// content-addressed object twice is harmless, so no existence check is made
// (callers only put chunks the index does not know).
func (s *S3) Put(ctx context.Context, id chunker.ID, blob []byte) error {
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(id)),
		Body: bytes.NewReader(blob), ContentLength: aws.Int64(int64(len(blob)))})
	if err != nil {
		return fmt.Errorf("put chunk %s: %w", id, err)
	}
	return nil
}

// Replace implements Replacer: a HEAD and a PUT per blob, replaceWorkers
// at a time. A PUT replaces an object atomically; the HEAD before it keeps
// Replace from creating a blob that is gone (deletions and rewrites do not
// overlap: both hold the maintenance lock).
func (s *S3) Replace(ctx context.Context, blobs []Blob) error {
	errs := make([]error, len(blobs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, replaceWorkers)
	for i, b := range blobs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = s.replace(ctx, b.ID, b.Data)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// replaceWorkers is how many blobs S3.Replace rewrites at once.
const replaceWorkers = 8

func (s *S3) replace(ctx context.Context, id chunker.ID, blob []byte) error {
	ok, err := s.Has(ctx, id)
	if err != nil {
		return fmt.Errorf("replace chunk %s: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("replace chunk %s: %w", id, ErrNotFound)
	}
	return s.Put(ctx, id, blob)
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, id chunker.ID) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(id))})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	return nil
}

// Walk implements Store.
func (s *S3) Walk(ctx context.Context, fn func(id chunker.ID, size int64) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(s.prefix + "chunks/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list chunks: %w", err)
		}
		for _, obj := range page.Contents {
			key := aws.ToString(obj.Key)
			id, err := chunker.ParseID(key[strings.LastIndexByte(key, '/')+1:])
			if err != nil {
				continue
			}
			if err := fn(id, aws.ToInt64(obj.Size)); err != nil {
				return err
			}
		}
	}
	return nil
}
