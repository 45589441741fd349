//go:build ts_debug_websockets

package interop

import (
	"errors"
	"net/http"
	"testing"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// wsSetup prepares a server, a plain (non-WebSocket) client, and a factory
// for WebSocket clients.
//
// derphttp's WebSocket transport is compiled in only with the
// ts_debug_websockets build tag (linux/darwin) and selected at connect time
// by TS_DEBUG_DERP_WS_CLIENT=true. The client dials the /derp URL with
// coder/websocket (subprotocol "derp") and speaks DERP framing inside binary
// messages; there is no metacert/fast start. It ignores any DERPMap CertName
// pin and uses http.DefaultClient, so in TLS mode that is swapped for one
// trusting the generated cert for the duration of the test.
func wsSetup(t *testing.T, s *server) (plain *client, newWS func(name string) *client) {
	plain = connect(t, s, "plain", key.NodePrivate{}) // before the env knob is set
	t.Setenv("TS_DEBUG_DERP_WS_CLIENT", "true")
	if s.mode == modeTLS {
		old := http.DefaultClient
		http.DefaultClient = &http.Client{Transport: &http.Transport{TLSClientConfig: s.tlsConfig()}}
		t.Cleanup(func() { http.DefaultClient = old })
	}
	newWS = func(name string) *client {
		priv := key.NewNode()
		dc, err := derphttpNewClient(t, priv, s.derpURL(), name)
		if err != nil {
			t.Fatal(err)
		}
		c := startClient(t, s, name, priv, dc)
		if _, ok := c.c.TLSConnectionState(); ok {
			t.Fatalf("%s: has a TLS state; the WebSocket transport was not used", name)
		}
		return c
	}
	return plain, newWS
}

// TestWebSocket: WebSocket clients exchange packets with a plain client and
// with each other, and PeerGone works, for packet sizes that fit in one
// coder/websocket message (see TestWebSocketLargePackets).
func TestWebSocket(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		plain, newWS := wsSetup(t, s)
		ws1 := newWS("ws1")
		ws2 := newWS("ws2")
		for _, n := range []int{0, 1, 1300, 30000} {
			p := payload("ws", n)
			ws1.send(plain.pub, p)
			plain.expectPacket(ws1.pub, p)
			plain.send(ws1.pub, p)
			ws1.expectPacket(plain.pub, p)
			ws1.send(ws2.pub, p)
			ws2.expectPacket(ws1.pub, p)
		}
		ws1.pingBarrier()
		ws1.c.NotePreferred(true)
		ws1.pingBarrier()
		ws1.Close()
		ws2.expectPeerGone(ws1.pub, derp.PeerGoneReasonDisconnected)
		plain.expectPeerGone(ws1.pub, derp.PeerGoneReasonDisconnected)
	})
}

// TestWebSocketLargePackets: coder/websocket, used on both sides by
// Tailscale, has a default read limit of 32768 bytes per message and neither
// side raises it. The Go writers flush through a 4 KiB bufio.Writer, so a
// 65536-byte packet becomes a 4096-byte message plus a ~61 KiB message:
//   - WebSocket client -> Tailscale's derper: the server's read fails
//     ("message too big") and it drops the connection;
//   - derper -> WebSocket client: the client's read fails the same way.
//
// For our server: it must accept large messages from clients, and must write
// messages of at most 32768 bytes so Tailscale's WebSocket clients can read
// them; so both directions must work.
func TestWebSocketLargePackets(t *testing.T) {
	forEachMode(t, []mode{modePlain}, func(t *testing.T, s *server) {
		plain, newWS := wsSetup(t, s)
		ws := newWS("ws")
		p := payload("big", derp.MaxPacketSize)
		ws.send(plain.pub, []byte("small first"))
		plain.expectPacket(ws.pub, []byte("small first"))

		if flavor() == "tailscale" {
			// Document upstream behaviour: the server closes the sender.
			ws.send(plain.pub, p)
			if _, err := ws.tryNext(opTimeout); err == nil || errors.Is(err, errTimeout) {
				t.Fatalf("Tailscale flavor: expected the server to drop the WebSocket sending 65536 bytes, got %v", err)
			}
			plain.expectPeerGone(ws.pub, derp.PeerGoneReasonDisconnected)

			// And the receive direction breaks the client.
			ws2 := newWS("ws2")
			plain.send(ws2.pub, p)
			if _, err := ws2.tryNext(opTimeout); err == nil || errors.Is(err, errTimeout) {
				t.Fatalf("Tailscale flavor: expected the WebSocket client to fail reading a 65536-byte packet, got %v", err)
			}
			t.Log("DERPER_FLAVOR=tailscale: 65536-byte packets over WebSocket break the connection in both directions (32768-byte message read limit)")
			return
		}
		ws.send(plain.pub, p)
		plain.expectPacket(ws.pub, p)
		plain.send(ws.pub, p)
		ws.expectPacket(plain.pub, p)
	})
}
