package interop

import (
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// TestPeerGoneDisconnected: A has received a packet from B; when B
// disconnects, A gets PeerGone(B, Disconnected=0). C, which never received
// from B, gets nothing.
func TestPeerGoneDisconnected(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		a := connect(t, s, "a", key.NodePrivate{})
		b := connect(t, s, "b", key.NodePrivate{})
		c := connect(t, s, "c", key.NodePrivate{})
		b.send(a.pub, []byte("hello from b"))
		a.expectPacket(b.pub, []byte("hello from b"))
		// c only ever sent to b.
		c.send(b.pub, []byte("hello from c"))
		b.expectPacket(c.pub, []byte("hello from c"))

		b.Close()
		a.expectPeerGone(b.pub, derp.PeerGoneReasonDisconnected)
		c.expectQuiet(quietWindow)
		a.expectQuiet(quietWindow)

		// B reconnects and leaves again without sending to A in between:
		// the watcher registration was consumed, so no second PeerGone.
		b2 := connect(t, s, "b2", b.priv)
		b2.Close()
		a.expectQuiet(quietWindow)

		// B reconnects, sends to A again, and leaves. Upstream quirk: A's
		// connection remembers it already saw B (sclient.sawSrc is never
		// cleared when the PeerGone fires), so no new watcher is registered
		// and A gets no second PeerGone. A fresh connection would.
		b3 := connect(t, s, "b3", b.priv)
		b3.send(a.pub, []byte("b is back"))
		a.expectPacket(b3.pub, []byte("b is back"))
		b3.Close()
		m, err := a.tryNext(2 * quietWindow)
		switch {
		case flavor() == "tailscale":
			if err == nil {
				t.Errorf("tailscale flavor: got %T %s after B's second departure; upstream sends no second PeerGone", m, describe(m))
			}
		case err == nil:
			// A server that re-arms the watcher must send exactly this.
			if pg, ok := m.(derp.PeerGoneMessage); !ok || pg.Peer != b.pub || pg.Reason != derp.PeerGoneReasonDisconnected {
				t.Errorf("after B's second departure: got %T %s, want nothing or PeerGone(B, Disconnected)", m, describe(m))
			}
			t.Logf("flavor %s: second PeerGone sent (upstream does not)", flavor())
		default:
			t.Logf("flavor %s: no second PeerGone (same as upstream)", flavor())
		}
	})
}

// TestPeerGoneNotHere: a disco-looking packet (magic "TS💬" + >= 56 bytes,
// i.e. >= 62 bytes total) to an unknown key yields PeerGone(dst, NotHere=1);
// non-disco or too-short packets to unknown keys are dropped silently. The
// NotHere replies are rate-limited per connection: burst 3, then 1/s.
func TestPeerGoneNotHere(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		a := connect(t, s, "a", key.NodePrivate{})

		unknown := key.NewNode().Public()
		a.send(unknown, []byte("not disco"))
		a.send(unknown, discoLike(55)) // 61 bytes: too short to be disco
		a.send(unknown, make([]byte, 100))
		if got := a.pingBarrier(); len(got) != 0 {
			t.Fatalf("non-disco to unknown key: got %d messages, first %T %s; want none", len(got), got[0], describe(got[0]))
		}
		a.expectQuiet(quietWindow)

		// Burst of 5 disco packets to 5 unknown keys: 3 PeerGones.
		var keys []key.NodePublic
		for range 5 {
			k := key.NewNode().Public()
			keys = append(keys, k)
			a.send(k, discoLike(56))
		}
		got := map[key.NodePublic]bool{}
		for range 3 {
			m := a.next(opTimeout)
			pg, ok := m.(derp.PeerGoneMessage)
			if !ok || pg.Reason != derp.PeerGoneReasonNotHere {
				t.Fatalf("got %T %s, want PeerGone NotHere", m, describe(m))
			}
			got[pg.Peer] = true
		}
		// The PeerGones are written from separate goroutines upstream, so
		// their order is not guaranteed; they are for the first three keys.
		for _, k := range keys[:3] {
			if !got[k] {
				t.Errorf("no PeerGone for key %v (one of the first three)", k.ShortString())
			}
		}
		a.expectQuiet(quietWindow)

		// After a second the bucket has a token again.
		time.Sleep(time.Second)
		k := key.NewNode().Public()
		a.send(k, discoLike(200))
		a.expectPeerGone(k, derp.PeerGoneReasonNotHere)
	})
}
