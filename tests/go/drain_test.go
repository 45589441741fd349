package interop

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// TestDrainSeenByTailscaleClient: on SIGTERM our relay keeps the connection, and Tailscale's
// own client decodes a HealthMessage saying the relay is draining (magicsock shows it as a
// warning for the region) and a ServerRestartingMessage; once the client leaves, the process
// exits 0. Tailscale's derper has no drain: there, SIGTERM ends the connection at once,
// which the same test asserts so the suite stays validated against it.
func TestDrainSeenByTailscaleClient(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		c := connect(t, s, "drained", key.NodePrivate{})
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if flavor() == "tailscale" {
			if _, err := c.tryNext(opTimeout); err == nil || strings.Contains(err.Error(), "timeout") {
				t.Fatalf("Tailscale's derper: want the connection to end on SIGTERM, got %v", err)
			}
			return
		}
		var sawHealth, sawRestarting bool
		for !(sawHealth && sawRestarting) {
			switch m := c.next(opTimeout).(type) {
			case derp.HealthMessage:
				if !strings.Contains(m.Problem, "draining") {
					t.Fatalf("health problem = %q, want it to mention draining", m.Problem)
				}
				sawHealth = true
			case derp.ServerRestartingMessage:
				if m.ReconnectIn <= 0 || m.TryFor <= 0 {
					t.Fatalf("restarting = %+v", m)
				}
				sawRestarting = true
			default:
				t.Fatalf("unexpected %T %s", m, describe(m))
			}
		}
		// Still connected during the drain: a ping is answered.
		if err := c.c.SendPing([8]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.next(opTimeout).(derp.PongMessage); !ok {
			t.Fatal("no pong while draining")
		}
		c.Close()
		select {
		case <-s.exited:
			if s.waitErr != nil {
				t.Fatalf("exit after drain: %v", s.waitErr)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("still running 10 s after its last client left")
		}
	})
}
