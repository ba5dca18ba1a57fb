package gateway_test

import (
	"context"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compatool/compatool/internal/gateway"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The benchmarks compare one trivial tool call over loopback HTTP with the
// official client: Direct serves the server with a plain
// StreamableHTTPHandler (the baseline), Gateway serves it through a Host
// (token check, recording). Both clients send the same bearer header, so the
// difference is the gateway's alone. Run with -cpu 2 for the 2-core target.

func benchTool() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "bench"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "add"}, func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
		return nil, addOut{Sum: in.A + in.B}, nil
	})
	return s
}

// benchEndpoint returns an endpoint serving benchTool and the token to send.
func benchEndpoint(b *testing.B, viaGateway bool) (string, string) {
	server := benchTool()
	if !viaGateway {
		h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
		return serve(b, h).URL + "/mcp", "unused-token"
	}
	host := gateway.NewHost(&gateway.Options{MaxCalls: 1 << 30})
	run, token := open(b, host, "bench", gateway.Backend{Server: server})
	return serve(b, host).URL + run.Path(), token
}

func benchSessions(b *testing.B, endpoint, token string, n int) []*mcp.ClientSession {
	rt := bearer{token: token, base: &http.Transport{MaxIdleConnsPerHost: 256}}
	var out []*mcp.ClientSession
	for range n {
		cs, err := connect(context.Background(), endpoint, rt)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cs.Close() })
		out = append(out, cs)
	}
	return out
}

var benchArgs = map[string]int{"a": 2, "b": 3}

// benchCall makes one call; it reports failure with Error so that it may run
// on RunParallel's goroutines.
func benchCall(b *testing.B, cs *mcp.ClientSession) bool {
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "add", Arguments: benchArgs})
	if err != nil || res.IsError {
		b.Errorf("CallTool: %v %v", res, err)
		return false
	}
	return true
}

func benchSerial(b *testing.B, viaGateway bool) {
	endpoint, token := benchEndpoint(b, viaGateway)
	cs := benchSessions(b, endpoint, token, 1)[0]
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		if !benchCall(b, cs) {
			return
		}
	}
	report(b, cpu0)
}

func benchParallel(b *testing.B, viaGateway bool) {
	const parallelism = 4 // goroutines per core: calls wait on I/O
	endpoint, token := benchEndpoint(b, viaGateway)
	sessions := benchSessions(b, endpoint, token, parallelism*runtime.GOMAXPROCS(0))
	var next atomic.Int64
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		cs := sessions[int(next.Add(1)-1)%len(sessions)]
		for pb.Next() && benchCall(b, cs) {
		}
	})
	report(b, cpu0)
}

// report adds calls/s by wall time, and the CPU time per call of client and
// server together (both run in this process), which stays meaningful on a
// busy machine: 2 cores give 2 CPU-seconds per second.
func report(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/call")
	}
}

// BenchmarkRatio alternates direct and gateway calls, so that both see the
// same load on the machine, and reports the ratio of their mean latencies.
func BenchmarkRatio(b *testing.B) {
	endpoint, token := benchEndpoint(b, false)
	direct := benchSessions(b, endpoint, token, 1)[0]
	endpoint, token = benchEndpoint(b, true)
	gw := benchSessions(b, endpoint, token, 1)[0]
	var td, tg time.Duration
	for b.Loop() {
		t0 := time.Now()
		if !benchCall(b, direct) {
			return
		}
		t1 := time.Now()
		if !benchCall(b, gw) {
			return
		}
		td, tg = td+t1.Sub(t0), tg+time.Since(t1)
	}
	b.ReportMetric(float64(td.Microseconds())/float64(b.N), "direct-µs/call")
	b.ReportMetric(float64(tg.Microseconds())/float64(b.N), "gateway-µs/call")
	b.ReportMetric(float64(tg)/float64(td), "gateway/direct")
}

func BenchmarkDirect(b *testing.B)          { benchSerial(b, false) }
func BenchmarkGateway(b *testing.B)         { benchSerial(b, true) }
func BenchmarkDirectParallel(b *testing.B)  { benchParallel(b, false) }
func BenchmarkGatewayParallel(b *testing.B) { benchParallel(b, true) }
