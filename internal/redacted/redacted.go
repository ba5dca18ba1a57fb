// Package redacted holds the one type a transcript store accepts. Its
// constructor is internal to the module so that only package redact can make
// a value: storage exposes the type as storage.RedactedTranscript.
package redacted

import (
	"bytes"
	"io"
)

// Transcript is an encoded transcript document that has passed redaction.
type Transcript struct {
	doc                  []byte
	run, org, submission string
}

// Make wraps doc, which must be the output of a redactor. It does not copy doc.
func Make(doc []byte, run, org, submission string) Transcript {
	return Transcript{doc: doc, run: run, org: org, submission: submission}
}

// IsZero reports whether t was made by a redactor at all.
func (t Transcript) IsZero() bool { return t.doc == nil }

// RunID, Org and SubmissionID are the transcript's keys.
func (t Transcript) RunID() string        { return t.run }
func (t Transcript) Org() string          { return t.org }
func (t Transcript) SubmissionID() string { return t.submission }

// Size is the encoded length in bytes.
func (t Transcript) Size() int64 { return int64(len(t.doc)) }

// Open returns a reader over the encoded document. Each call starts anew.
func (t Transcript) Open() io.Reader { return bytes.NewReader(t.doc) }
