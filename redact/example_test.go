package redact_test

import (
	"encoding/json"
	"fmt"

	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
)

func Example() {
	goal := "Book the 9:15 train to Bergen"
	t := &storage.Transcript{
		Run:  "run-1",
		Org:  "org-1",
		Goal: goal,
		Events: []storage.Event{
			{Seq: 1, Kind: storage.EventLog, Log: &storage.Log{Stream: "stderr", Data: "token tok_5up3r: ok\n"}},
			// The agent escaped one letter of the goal; it is found anyway.
			{Seq: 2, Kind: storage.EventToolCall, ToolCall: &storage.ToolCall{
				Name:      "search",
				Arguments: json.RawMessage(`{"q": "Book the 9:15 train to B\u0065rgen", "limit": 1.0}`),
			}},
		},
	}
	rt, err := redact.Default.Redact(t, redact.Sensitive{Goal: goal, Secrets: []string{"tok_5up3r"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	var stored storage.Transcript
	if err := json.NewDecoder(rt.Open()).Decode(&stored); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(stored.Goal)
	fmt.Printf("%q\n", stored.Events[0].Log.Data)
	fmt.Println(string(stored.Events[1].ToolCall.Arguments))
	// Output:
	// [REDACTED]
	// "token [REDACTED]: ok\n"
	// {"q": "[REDACTED]", "limit": 1.0}
}

func ExampleCompile() {
	m := redact.Compile(redact.Sensitive{Goal: "abcdef", Secrets: []string{"defghi", ""}})
	// Overlapping occurrences become one marker; nothing of either is left.
	fmt.Println(m.ReplaceString("1 abcdefghi 2 defghi"))
	fmt.Println(m.Contains("abcde"))
	// Output:
	// 1 [REDACTED] 2 [REDACTED]
	// false
}
