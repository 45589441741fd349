package interop

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// TestRelay: two clients exchange packets both ways, at 0, 1, 1300 and 65536
// (derp.MaxPacketSize) bytes; the receiver sees the sender's key (v2 framing).
func TestRelay(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		a := connect(t, s, "a", key.NodePrivate{})
		b := connect(t, s, "b", key.NodePrivate{})
		for _, n := range []int{0, 1, 1300, derp.MaxPacketSize} {
			pa := payload(fmt.Sprintf("a->b %d", n), n)
			a.send(b.pub, pa)
			b.expectPacket(a.pub, pa)

			pb := payload(fmt.Sprintf("b->a %d", n), n)
			b.send(a.pub, pb)
			a.expectPacket(b.pub, pb)
		}
		// A burst within the per-client queue depth (32) arrives complete and in
		// order. (Bigger bursts may lose packets: the server drops the queue head.)
		for i := range 25 {
			a.send(b.pub, fmt.Appendf(nil, "seq %d", i))
		}
		for i := range 25 {
			b.expectPacket(a.pub, fmt.Appendf(nil, "seq %d", i))
		}
		// Sending to yourself works like any other destination.
		a.send(a.pub, []byte("self"))
		a.expectPacket(a.pub, []byte("self"))
	})
}

// TestOversizeClientSide: Tailscale's derp.Client refuses to send 65537
// bytes ("derp.Send: packet too big: 65537") without writing anything, and
// the connection stays usable. derphttp.Client.Send shadows that error and
// returns nil (upstream quirk in v1.102.5) but drops the connection for
// reconnect. Either way nothing reaches the peer.
func TestOversizeClientSide(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		b := connect(t, s, "b", key.NodePrivate{})

		rc := newRawClient(t, s, key.NodePrivate{})
		err := rc.dc.Send(b.pub, make([]byte, derp.MaxPacketSize+1))
		if err == nil || !strings.Contains(err.Error(), "packet too big: 65537") {
			t.Fatalf("derp.Client.Send(65537 bytes) error = %v, want \"packet too big: 65537\"", err)
		}
		rc.pingPong()

		a := connect(t, s, "a", key.NodePrivate{})
		if err := a.c.Send(b.pub, make([]byte, derp.MaxPacketSize+1)); err != nil {
			t.Logf("derphttp.Client.Send(65537 bytes) = %v (upstream v1.102.5 returns nil)", err)
		}
		// The dropped connection shows up in the receive loop either as an
		// error or, if its next Recv call started after the drop, as a
		// transparent reconnect (a fresh ServerInfo).
		m, err := a.tryNext(opTimeout)
		if _, reconnected := m.(derp.ServerInfoMessage); !reconnected && (err == nil || errors.Is(err, errTimeout)) {
			t.Errorf("derphttp client: connection not dropped after oversize Send (got %T, err=%v)", m, err)
		}
		b.expectQuiet(quietWindow)
	})
}

// TestOversizeServerSide writes a SendPacket frame whose packet is 65537 bytes
// (frame length 32+65537) by hand: the server closes the connection without
// delivering anything. A hand-written frame of exactly 65536 is delivered.
func TestOversizeServerSide(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		b := connect(t, s, "b", key.NodePrivate{})
		rc := newRawClient(t, s, key.NodePrivate{})

		ok := payload("max", derp.MaxPacketSize)
		if err := rc.writeFrame(derp.FrameSendPacket, append(b.pub.AppendTo(nil), ok...)); err != nil {
			t.Fatal(err)
		}
		b.expectPacket(rc.pub, ok)

		// The write may fail part-way if the server resets the connection;
		// what matters is that it is closed and nothing is delivered.
		_ = rc.writeFrame(derp.FrameSendPacket, append(b.pub.AppendTo(nil), make([]byte, derp.MaxPacketSize+1)...))
		rc.expectClosed()
		// The peer sees the sender leave and gets nothing else.
		b.expectPeerGone(rc.pub, derp.PeerGoneReasonDisconnected)
		b.expectQuiet(quietWindow)
	})
}

// TestPingPong: a client Ping is answered by a Pong with the same 8 bytes.
// Longer Pings (up to 1000 bytes) are answered with their first 8 bytes.
func TestPingPong(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		a := connect(t, s, "a", key.NodePrivate{})
		for _, data := range [][8]byte{{1, 2, 3, 4, 5, 6, 7, 8}, {}, {0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8}} {
			if err := a.c.SendPing(data); err != nil {
				t.Fatal(err)
			}
			m := a.next(opTimeout)
			if p, ok := m.(derp.PongMessage); !ok || p != derp.PongMessage(data) {
				t.Fatalf("got %T %s, want Pong %x", m, describe(m), data)
			}
		}

		rc := newRawClient(t, s, key.NodePrivate{})
		long := make([]byte, 1000)
		copy(long, "12345678")
		for i := 8; i < len(long); i++ {
			long[i] = 0xee
		}
		if err := rc.writeFrame(derp.FramePing, long); err != nil {
			t.Fatal(err)
		}
		m, err := rc.recv(opTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := m.(derp.PongMessage); !ok || string(p[:]) != "12345678" {
			t.Fatalf("1000-byte ping: got %T %s, want Pong \"12345678\"", m, describe(m))
		}
		rc.pingPong() // still alive
	})
}

// TestNotePreferred: NotePreferred(true/false) frames are accepted and the
// connection keeps relaying in both directions.
func TestNotePreferred(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		a := connect(t, s, "a", key.NodePrivate{})
		b := connect(t, s, "b", key.NodePrivate{})
		for i, v := range []bool{true, false, true} {
			a.c.NotePreferred(v)
			a.pingBarrier()
			p := fmt.Appendf(nil, "after NotePreferred(%v) #%d", v, i)
			a.send(b.pub, p)
			b.expectPacket(a.pub, p)
			b.send(a.pub, p)
			a.expectPacket(b.pub, p)
		}
	})
}

// TestFrameValidation sends malformed or unprivileged frames by hand and
// checks whether the server closes the connection (it never answers with an
// error frame) or ignores/handles the frame.
func TestFrameValidation(t *testing.T) {
	someKey := key.NewNode().Public().AppendTo(nil)
	cases := []struct {
		name    string
		typ     derp.FrameType
		payload []byte
		closes  bool
	}{
		{"NotePreferred len 0", derp.FrameNotePreferred, nil, true},
		{"NotePreferred len 2", derp.FrameNotePreferred, []byte{1, 1}, true},
		{"NotePreferred 0x02 (non-zero = preferred)", derp.FrameNotePreferred, []byte{2}, false},
		{"Ping len 7", derp.FramePing, make([]byte, 7), true},
		{"Ping len 1001", derp.FramePing, make([]byte, 1001), true},
		{"SendPacket len 31", derp.FrameSendPacket, make([]byte, 31), true},
		{"WatchConns without mesh key", derp.FrameWatchConns, nil, true},
		{"WatchConns len 1", derp.FrameWatchConns, []byte{0}, true},
		{"ClosePeer without mesh key", derp.FrameClosePeer, someKey, true},
		{"ClosePeer len 31", derp.FrameClosePeer, someKey[:31], true},
		{"ForwardPacket without mesh key", derp.FrameForwardPacket, append(append(someKey, someKey...), 'x'), true},
		{"unknown type 0x30 with payload", derp.FrameType(0x30), []byte("skip me"), false},
		{"unknown type 0x0b empty", derp.FrameType(0x0b), nil, false},
		{"ClientInfo again", derp.FrameClientInfo, make([]byte, 60), false},
		{"Pong from client", derp.FramePong, make([]byte, 8), false},
		{"KeepAlive from client", derp.FrameKeepAlive, nil, false},
	}
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				rc := newRawClient(t, s, key.NodePrivate{})
				if err := rc.writeFrame(tc.typ, tc.payload); err != nil {
					t.Fatal(err)
				}
				if tc.closes {
					rc.expectClosed()
				} else {
					rc.pingPong()
				}
			})
		}
	})
}
