package interop

import (
	"fmt"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// waitDelivered makes sender send fresh packets to dst every 50 ms until
// want receives one (the others are lost to an inactive/closed connection).
// It returns the number of packets sent.
func waitDelivered(t *testing.T, sender *client, dst key.NodePublic, want *client, tag string) int {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for i := 1; time.Now().Before(deadline); i++ {
		p := fmt.Appendf(nil, "%s #%d", tag, i)
		sender.send(dst, p)
		m, err := want.tryNext(50 * time.Millisecond)
		if err == nil {
			rp, ok := m.(derp.ReceivedPacket)
			if !ok || rp.Source != sender.pub {
				t.Fatalf("%s: got %T %s, want a packet from %s", want.name, m, describe(m), sender.name)
			}
			// Accept any of the packets sent so far (the earlier ones may
			// still be queued).
			return i
		}
	}
	t.Fatalf("%s never received %q packets", want.name, tag)
	return 0
}

// TestDuplicateKeys: two connections with the same key. Policy "last writer
// is active": the newest registration is active; any frame sent by a member
// makes it active; when one of two leaves, the other is active again. No
// PeerGone is sent when 2 connections drop to 1, only on 1 -> 0.
func TestDuplicateKeys(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		b := connect(t, s, "b", key.NodePrivate{})
		priv := key.NewNode()
		a1 := connect(t, s, "a1", priv)
		// a1 sends to b, so b will get PeerGone(a) once a is fully gone.
		a1.send(b.pub, []byte("from a1"))
		b.expectPacket(a1.pub, []byte("from a1"))

		a2 := connect(t, s, "a2", priv) // newest: active
		b.send(priv.Public(), []byte("p1"))
		a2.expectPacket(b.pub, []byte("p1"))
		a1.expectQuiet(quietWindow)

		// a1 sends a frame (a Ping): a1 becomes active.
		a1.pingBarrier()
		b.send(priv.Public(), []byte("p2"))
		a1.expectPacket(b.pub, []byte("p2"))
		a2.expectQuiet(quietWindow)

		// a2 sends: a2 active again.
		a2.pingBarrier()
		b.send(priv.Public(), []byte("p3"))
		a2.expectPacket(b.pub, []byte("p3"))
		a1.expectQuiet(quietWindow)

		// Both still receive their own pongs regardless of which is active.
		a1.pingBarrier()
		a2.pingBarrier() // a2 active (last writer)

		// a2 (active) leaves: a1 becomes active again.
		a2.Close()
		waitDelivered(t, b, priv.Public(), a1, "after a2 closed")
		// 2 -> 1 connections: no PeerGone to b.
		time.Sleep(quietWindow)
		if got := b.pingBarrier(); len(got) != 0 {
			t.Fatalf("b got %T %s after a2 left (2->1 conns), want nothing", got[0], describe(got[0]))
		}

		// a1 leaves: 1 -> 0, b gets PeerGone(a, Disconnected).
		a1.Close()
		b.expectPeerGone(priv.Public(), derp.PeerGoneReasonDisconnected)
	})
}

// TestDuplicateKeysThreeConns documents the upstream sendHistory detail:
// with three connections a1, a2, a3 (in that order, none sending), the
// history is [a1, a3] (the second connection is not recorded), so when a3
// (active) leaves, a1 becomes active, not a2.
func TestDuplicateKeysThreeConns(t *testing.T) {
	forEachMode(t, []mode{modePlain}, func(t *testing.T, s *server) {
		b := connect(t, s, "b", key.NodePrivate{})
		priv := key.NewNode()
		a1 := connect(t, s, "a1", priv)
		a2 := connect(t, s, "a2", priv)
		a3 := connect(t, s, "a3", priv)

		b.send(priv.Public(), []byte("to newest"))
		a3.expectPacket(b.pub, []byte("to newest"))
		a1.expectQuiet(quietWindow)
		a2.expectQuiet(0)

		a3.Close()
		waitDelivered(t, b, priv.Public(), a1, "after a3 closed")
		a2.expectQuiet(quietWindow)

		// a2 speaks up: it becomes active.
		a2.pingBarrier()
		b.send(priv.Public(), []byte("to a2"))
		a2.expectPacket(b.pub, []byte("to a2"))
		a1.expectQuiet(quietWindow)
	})
}
