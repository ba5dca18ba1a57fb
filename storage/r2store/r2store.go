// Package r2store is a [storage.TranscriptStore] on Cloudflare R2, through
// the S3 API of github.com/aws/aws-sdk-go-v2; it works with any S3-compatible
// service (its tests run against versitygw).
//
// It keeps promises P5 (transcripts are kept, then archived) and P8 (only a
// [storage.RedactedTranscript] is ever written) of DESIGN.md, with the scope
// rules of package storage (P11): every key holds its organisation, so one
// organisation's scope can never name another's object.
//
// # Keys
//
//	<prefix>live/<org>/<run>.json     live transcripts
//	<prefix>archive/<org>/<run>.json  archived transcripts (in Options.ArchiveBucket)
//
// The stored-at time (Unix nanoseconds) and the submission id are object
// metadata, written with the object in the same request. Organisation and
// run ids are checked with [storage.ValidID] ("." and ".." are refused as
// organisations) before they become a key.
//
// # Atomicity
//
// An S3 PUT is atomic: the object is whole or absent, and a cancelled ctx
// aborts the upload, leaving the previous object. Archive copies the live
// object to the archive key (with [Options.ArchiveStorageClass]) and then
// deletes the live one; Restore copies back and deletes the archived one; a
// Put deletes an archived copy after its upload. If a crash interrupts one
// of these between its two requests, the run exists under both keys: the
// live object wins everywhere (Get, StoredBefore), and the next Put,
// Archive, Restore or Delete of the run removes the other. Within one
// [Store], changes to one transcript are serialised; run one sweeper per
// bucket, so that two processes do not archive and restore the same run at
// once. Get takes no lock and never waits for a Put.
//
// # Cost
//
// Put is two requests (PUT, DELETE of an archived copy), Get one (two for an
// archived transcript), Archive and Restore two or three. StoredBefore lists
// every live key (one LIST per 1,000 live transcripts of all organisations),
// sorts the run ids after Page.After, and then sends a HEAD for each
// candidate in run-id order, 16 at a time, until the page is full, since
// listings carry no user metadata: O(N/1000) LISTs plus one HEAD per
// candidate examined.
//
// # R2
//
// [New] makes an S3 client for R2 from [Options.Endpoint] and an R2 API
// token's access key: region "auto", and request checksums and response
// validation only when the operation requires them (R2 does not implement
// every checksum the SDK sends by default). Uploads are signed with an
// unsigned payload, so they stream without a second pass over the body;
// use an https endpoint. The client reads no environment variables or shared
// configuration files and calls nothing but the endpoint (P15).
package r2store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

var _ storage.TranscriptStore = (*Store)(nil)

const (
	// DefaultMaxTranscriptBytes is the transcript size limit when
	// [Options.MaxTranscriptBytes] is zero.
	DefaultMaxTranscriptBytes = 1 << 30
	// MaxTranscriptBytes is the largest limit allowed: the largest object
	// one CopyObject request can archive.
	MaxTranscriptBytes = 5 << 30
	// DefaultArchiveStorageClass is the storage class of archived
	// transcripts when [Options.ArchiveStorageClass] is empty: R2's
	// Infrequent Access.
	DefaultArchiveStorageClass = types.StorageClassStandardIa
)

const (
	liveArea    = "live/"
	archiveArea = "archive/"
	ext         = ".json"
	metaStored  = "stored-at" // Unix nanoseconds
	metaSub     = "submission"
	headBatch   = 16
)

// Options configures a [Store]. Either Client or Endpoint with the access
// key is required.
type Options struct {
	// Client is the S3 client to use, as configured by the caller. When nil,
	// New makes one from the fields below.
	Client *s3.Client
	// Endpoint is the S3 API's base URL, for R2
	// "https://<account id>.r2.cloudflarestorage.com".
	Endpoint string
	// AccessKeyID and SecretAccessKey are the credentials (for R2, of an
	// R2 API token).
	AccessKeyID, SecretAccessKey string
	// Region is the signing region; empty means "auto", which R2 expects.
	Region string
	// UsePathStyle puts the bucket in the path rather than the host name;
	// most self-hosted S3 servers need it.
	UsePathStyle bool
	// HTTPClient sends the requests; nil means the SDK's default.
	HTTPClient s3.HTTPClient

	// Prefix is prepended to every key, e.g. "transcripts/".
	Prefix string
	// ArchiveBucket holds archived transcripts; empty means the bucket of
	// live ones.
	ArchiveBucket string
	// ArchiveStorageClass is the storage class archived transcripts are
	// copied into; empty means [DefaultArchiveStorageClass]. It must be a
	// class whose objects can be read at once (not a Glacier class), since
	// Get reads archived transcripts. "STANDARD" keeps the default class.
	ArchiveStorageClass types.StorageClass

	// Now is the clock that stamps [storage.TranscriptInfo.StoredAt]; nil
	// means time.Now.
	Now func() time.Time
	// MaxTranscriptBytes bounds the size of one transcript; 0 means
	// [DefaultMaxTranscriptBytes], and it may not exceed
	// [MaxTranscriptBytes]. A larger Put fails with storage.ErrInvalid.
	MaxTranscriptBytes int64
}

// Store keeps transcripts as objects of one bucket. It is safe for
// concurrent use.
type Store struct {
	client        *s3.Client
	bucket        string
	archiveBucket string
	prefix        string
	class         types.StorageClass
	now           func() time.Time
	max           int64
	locks         keyLocks
}

// New returns a store of the transcripts in bucket. opts is required: it
// names the client or the endpoint and credentials.
func New(bucket string, opts *Options) (*Store, error) {
	if bucket == "" {
		return nil, errors.New("r2store: empty bucket name; pass the bucket that holds the transcripts")
	}
	if opts == nil {
		opts = &Options{}
	}
	s := &Store{
		client:        opts.Client,
		bucket:        bucket,
		archiveBucket: cmp.Or(opts.ArchiveBucket, bucket),
		prefix:        opts.Prefix,
		class:         cmp.Or(opts.ArchiveStorageClass, DefaultArchiveStorageClass),
		now:           opts.Now,
		max:           cmp.Or(opts.MaxTranscriptBytes, DefaultMaxTranscriptBytes),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.max < 0 || s.max > MaxTranscriptBytes {
		return nil, fmt.Errorf("r2store: Options.MaxTranscriptBytes %d is out of range; use 1 to %d (what one CopyObject can archive)", s.max, int64(MaxTranscriptBytes))
	}
	if s.client == nil {
		if opts.Endpoint == "" || opts.AccessKeyID == "" || opts.SecretAccessKey == "" {
			return nil, errors.New("r2store: set Options.Client, or Options.Endpoint, AccessKeyID and SecretAccessKey")
		}
		creds := aws.Credentials{AccessKeyID: opts.AccessKeyID, SecretAccessKey: opts.SecretAccessKey, Source: "r2store.Options"}
		s.client = s3.New(s3.Options{
			Region:       cmp.Or(opts.Region, "auto"),
			BaseEndpoint: aws.String(opts.Endpoint),
			UsePathStyle: opts.UsePathStyle,
			Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
				return creds, nil
			}),
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
			HTTPClient:                 opts.HTTPClient,
		})
	}
	return s, nil
}

func (s *Store) key(area string, org auth.OrgID, run storage.RunID) string {
	return s.prefix + area + string(org) + "/" + string(run) + ext
}

// copySource is the CopySource of key in bucket: the bucket and the key,
// each path segment escaped.
func copySource(bucket, key string) string {
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return url.PathEscape(bucket) + "/" + strings.Join(segs, "/")
}

// begin runs the checks every tenant call makes first and returns the
// scope's organisation.
func (s *Store) begin(ctx context.Context, method string, sc auth.Scope) (auth.OrgID, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("r2store: %s: %w", method, err)
	}
	if err := storage.CheckScope(sc); err != nil {
		return "", fmt.Errorf("r2store: %s: %w", method, err)
	}
	org := sc.Org()
	if err := storage.ValidID(string(org)); err != nil {
		return "", fmt.Errorf("r2store: %s: organisation: %w", method, err)
	}
	if org == "." || org == ".." {
		return "", fmt.Errorf("r2store: %s: organisation id %q is a path segment: %w", method, org, storage.ErrInvalid)
	}
	return org, nil
}

func (s *Store) beginRun(ctx context.Context, method string, sc auth.Scope, run storage.RunID) (auth.OrgID, error) {
	org, err := s.begin(ctx, method, sc)
	if err != nil {
		return "", err
	}
	if err := storage.ValidID(string(run)); err != nil {
		return "", fmt.Errorf("r2store: %s: transcript: %w", method, err)
	}
	return org, nil
}

func notFound(run storage.RunID) error {
	return fmt.Errorf("r2store: transcript of run %q: %w", run, storage.ErrNotFound)
}

// isNotFound reports whether err is S3's answer for a missing object.
func isNotFound(err error) bool {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == 404 {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "NotFound")
}

// unsignedPayload signs an upload without hashing its body first, so the
// body streams in one pass.
func unsignedPayload(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
}

// Put uploads t to its live key and then removes an archived copy.
func (s *Store) Put(ctx context.Context, sc auth.Scope, t storage.RedactedTranscript) error {
	org, err := s.begin(ctx, "Put", sc)
	if err != nil {
		return err
	}
	if t.IsZero() {
		return fmt.Errorf("r2store: transcript was not made by package redact: %w", storage.ErrInvalid)
	}
	if auth.OrgID(t.Org()) != org {
		return fmt.Errorf("r2store: transcript of org %q under a scope of org %q: %w", t.Org(), org, storage.ErrInvalid)
	}
	run := storage.RunID(t.RunID())
	if err := storage.ValidID(string(run)); err != nil {
		return fmt.Errorf("r2store: transcript run: %w", err)
	}
	if err := storage.ValidID(t.SubmissionID()); err != nil {
		return fmt.Errorf("r2store: transcript submission: %w", err)
	}
	if t.Size() > s.max {
		return fmt.Errorf("r2store: transcript of %d bytes exceeds the limit of %d; raise Options.MaxTranscriptBytes: %w", t.Size(), s.max, storage.ErrInvalid)
	}
	unlock := s.locks.lock(org, run)
	defer unlock()
	_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(s.key(liveArea, org, run)),
		Body:          t.Open(),
		ContentLength: aws.Int64(t.Size()),
		ContentType:   aws.String("application/json"),
		Metadata: map[string]string{
			metaStored: strconv.FormatInt(s.now().UnixNano(), 10),
			metaSub:    t.SubmissionID(),
		},
	}, unsignedPayload)
	if err != nil {
		return fmt.Errorf("r2store: storing transcript of run %q: %w", run, err)
	}
	// The upload has replaced an archived transcript too. Once the live
	// object is there, ctx no longer matters: the Put has happened.
	if err := s.delete(context.WithoutCancel(ctx), s.archiveBucket, s.key(archiveArea, org, run)); err != nil {
		return fmt.Errorf("r2store: removing the archived copy of run %q: %w", run, err)
	}
	return nil
}

func (s *Store) delete(ctx context.Context, bucket, key string) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// Get reads the live transcript of run, or else the archived one.
func (s *Store) Get(ctx context.Context, sc auth.Scope, run storage.RunID) (io.ReadCloser, storage.TranscriptInfo, error) {
	org, err := s.beginRun(ctx, "Get", sc, run)
	if err != nil {
		return nil, storage.TranscriptInfo{}, err
	}
	// Archive and Restore copy before they delete, so one of the keys
	// always exists; asking for the live key again covers a Restore that
	// finished between the first two requests.
	for _, archived := range []bool{false, true, false} {
		bucket, key := s.bucket, s.key(liveArea, org, run)
		if archived {
			bucket, key = s.archiveBucket, s.key(archiveArea, org, run)
		}
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, storage.TranscriptInfo{}, fmt.Errorf("r2store: reading transcript of run %q: %w", run, err)
		}
		info, err := s.info(org, run, key, out.Metadata, out.ContentLength, archived)
		if err != nil {
			out.Body.Close()
			return nil, storage.TranscriptInfo{}, err
		}
		return out.Body, info, nil
	}
	return nil, storage.TranscriptInfo{}, notFound(run)
}

// info makes the info of an object from its metadata.
func (s *Store) info(org auth.OrgID, run storage.RunID, key string, meta map[string]string, size *int64, archived bool) (storage.TranscriptInfo, error) {
	ns, err := strconv.ParseInt(meta[metaStored], 10, 64)
	if err != nil || size == nil || storage.ValidID(meta[metaSub]) != nil {
		return storage.TranscriptInfo{}, fmt.Errorf("r2store: object %q lacks r2store's metadata; it was not written by this package", key)
	}
	return storage.TranscriptInfo{
		Run:        run,
		Submission: storage.SubmissionID(meta[metaSub]),
		Org:        org,
		Size:       *size,
		StoredAt:   time.Unix(0, ns).UTC(),
		Archived:   archived,
	}, nil
}

// Delete removes the live and the archived transcript of run.
func (s *Store) Delete(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Delete", sc, run)
	if err != nil {
		return err
	}
	unlock := s.locks.lock(org, run)
	defer unlock()
	if err := s.delete(ctx, s.bucket, s.key(liveArea, org, run)); err != nil {
		return fmt.Errorf("r2store: deleting transcript of run %q: %w", run, err)
	}
	if err := s.delete(ctx, s.archiveBucket, s.key(archiveArea, org, run)); err != nil {
		return fmt.Errorf("r2store: deleting archived transcript of run %q: %w", run, err)
	}
	return nil
}

// Archive copies the live transcript to the archive key in the archive
// storage class, then deletes the live object.
func (s *Store) Archive(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Archive", sc, run)
	if err != nil {
		return err
	}
	unlock := s.locks.lock(org, run)
	defer unlock()
	live, archived := s.key(liveArea, org, run), s.key(archiveArea, org, run)
	_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket:       aws.String(s.archiveBucket),
		Key:          aws.String(archived),
		CopySource:   aws.String(copySource(s.bucket, live)),
		StorageClass: s.class,
	})
	if isNotFound(err) {
		ok, err := s.exists(ctx, s.archiveBucket, archived)
		switch {
		case err != nil:
			return fmt.Errorf("r2store: archiving transcript of run %q: %w", run, err)
		case !ok:
			return notFound(run)
		}
		return nil // archived already
	}
	if err != nil {
		return fmt.Errorf("r2store: archiving transcript of run %q (copy to storage class %s): %w", run, s.class, err)
	}
	if err := s.delete(ctx, s.bucket, live); err != nil {
		return fmt.Errorf("r2store: archiving transcript of run %q (delete of the live copy): %w", run, err)
	}
	return nil
}

// Restore copies the archived transcript back to the live key in the
// default storage class, then deletes the archived object. If a live
// transcript exists, it wins and the archived copy is removed.
func (s *Store) Restore(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Restore", sc, run)
	if err != nil {
		return err
	}
	unlock := s.locks.lock(org, run)
	defer unlock()
	live, archived := s.key(liveArea, org, run), s.key(archiveArea, org, run)
	ok, err := s.exists(ctx, s.bucket, live)
	if err != nil {
		return fmt.Errorf("r2store: restoring transcript of run %q: %w", run, err)
	}
	if !ok {
		_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket:     aws.String(s.bucket),
			Key:        aws.String(live),
			CopySource: aws.String(copySource(s.archiveBucket, archived)),
		})
		if isNotFound(err) {
			return notFound(run)
		}
		if err != nil {
			return fmt.Errorf("r2store: restoring transcript of run %q: %w", run, err)
		}
	}
	if err := s.delete(ctx, s.archiveBucket, archived); err != nil {
		return fmt.Errorf("r2store: restoring transcript of run %q (delete of the archived copy): %w", run, err)
	}
	return nil
}

func (s *Store) exists(ctx context.Context, bucket, key string) (bool, error) {
	_, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if isNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// StoredBefore lists live transcripts of every org stored before t. See the
// package documentation for its cost.
func (s *Store) StoredBefore(ctx context.Context, t time.Time, p storage.Page) ([]storage.TranscriptInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("r2store: StoredBefore: %w", err)
	}
	type candidate struct {
		org auth.OrgID
		run storage.RunID
	}
	var cands []candidate
	prefix := s.prefix + liveArea
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("r2store: listing transcripts: %w", err)
		}
		for _, o := range page.Contents {
			org, name, ok := strings.Cut(strings.TrimPrefix(aws.ToString(o.Key), prefix), "/")
			run, isJSON := strings.CutSuffix(name, ext)
			if ok && isJSON && run > p.After && storage.ValidID(org) == nil && storage.ValidID(run) == nil {
				cands = append(cands, candidate{auth.OrgID(org), storage.RunID(run)})
			}
		}
	}
	slices.SortFunc(cands, func(a, b candidate) int { return cmp.Or(cmp.Compare(a.run, b.run), cmp.Compare(a.org, b.org)) })

	type result struct {
		info storage.TranscriptInfo
		ok   bool
		err  error
	}
	out := []storage.TranscriptInfo{}
	for len(cands) > 0 && len(out) < p.N() {
		batch := cands[:min(len(cands), headBatch)]
		cands = cands[len(batch):]
		results := make([]result, len(batch))
		var wg sync.WaitGroup
		for i, c := range batch {
			wg.Go(func() {
				key := s.key(liveArea, c.org, c.run)
				h, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
				if isNotFound(err) {
					return // archived or deleted since the listing
				}
				if err != nil {
					results[i].err = fmt.Errorf("r2store: reading metadata of %q: %w", key, err)
					return
				}
				info, err := s.info(c.org, c.run, key, h.Metadata, h.ContentLength, false)
				results[i] = result{info, info.StoredAt.Before(t), err}
			})
		}
		wg.Wait()
		for _, r := range results {
			if r.err != nil {
				return nil, r.err
			}
			if r.ok && len(out) < p.N() {
				out = append(out, r.info)
			}
		}
	}
	return out, nil
}

// keyLocks serialises the changes to one transcript. Entries live only
// while someone holds or waits for them.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

func (l *keyLocks) lock(org auth.OrgID, run storage.RunID) (unlock func()) {
	k := string(org) + "/" + string(run)
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	e := l.m[k]
	if e == nil {
		e = &keyLock{}
		l.m[k] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, k)
		}
		l.mu.Unlock()
	}
}
