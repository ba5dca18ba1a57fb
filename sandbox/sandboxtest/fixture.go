package sandboxtest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// fixture is the host side of the suite: the run's MCP gateway and the host
// services no agent may reach.
type fixture struct {
	*Gateway
	hostAddr  string // an HTTP service on 127.0.0.1, another port than the gateway's
	host6Addr string // the same on [::1], if the host has IPv6 loopback
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{}
	hostService := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("host service\n")) })
	host := httptest.NewServer(hostService)
	t.Cleanup(host.Close)
	f.hostAddr = host.Listener.Addr().String()

	f.host6Addr = "[::1]:1"
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		host6 := httptest.NewUnstartedServer(hostService)
		host6.Listener.Close()
		host6.Listener = ln
		host6.Start()
		t.Cleanup(host6.Close)
		f.host6Addr = ln.Addr().String()
	}
	f.Gateway = newGateway(t, "http://"+f.hostAddr+"/")
	return f
}
