// Command goldens records DERP frames produced by Tailscale's own Go code
// (tailscale.com/derp and tailscale.com/derp/derpserver at the version pinned
// in go.mod) for the Rust unit tests. Run by hand from tests/go:
//
//	go run ./cmd/goldens > ../../derp-proto/testdata/go-vectors.json
//
// A real derpserver.Server accepts in-memory connections (net.Pipe) from real
// derp.Clients; every byte each client reads or writes is recorded and split
// into frames. Keys are fixed (derived from fixed seeds), peer addresses are
// fixed strings, so the output is stable except for the random NaCl nonces
// (and hence boxes) in ClientInfo/ServerInfo; their plaintext is included.
//
// By default the program waits for the server's first KeepAlive (60 s + up to
// 5 s jitter). -synth-keepalive instead writes the KeepAlive frame with the
// same derp.WriteFrameHeader call the server uses.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"go4.org/mem"
	"tailscale.com/derp"
	"tailscale.com/derp/derpserver"
	"tailscale.com/types/key"
)

var synthKeepAlive = flag.Bool("synth-keepalive", false, "don't wait ~65 s for a real server KeepAlive; write it with derp.WriteFrameHeader")

// fixedNodeKey derives a node private key from a fixed seed, clamped the way
// key.NewNode clamps random keys.
func fixedNodeKey(seed string) key.NodePrivate {
	b := sha256.Sum256([]byte("derpfleet golden vectors: " + seed))
	b[0] &= 248
	b[31] = (b[31] & 127) | 64
	return key.NodePrivateFromRaw32(mem.B(b[:]))
}

// recConn records every byte read from / written to a connection.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	rx, tx bytes.Buffer
}

func (c *recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.rx.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.tx.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recConn) streams() (rx, tx []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.rx.Bytes()), bytes.Clone(c.tx.Bytes())
}

type peer struct {
	name       string
	priv       key.NodePrivate
	pub        key.NodePublic
	remoteAddr string // what the server is told the peer's address is
	conn       *recConn
	dc         *derp.Client
}

type out struct {
	TailscaleVersion string       `json:"tailscale_version"`
	Generator        string       `json:"generator"`
	ServerPrivate    string       `json:"server_private"`
	ServerPublic     string       `json:"server_public"`
	MeshKey          string       `json:"mesh_key"`
	Clients          []outClient  `json:"clients"`
	Constants        outConstants `json:"constants"`
	Frames           []outFrame   `json:"frames"`
}

type outClient struct {
	Name       string `json:"name"`
	Private    string `json:"private"`
	Public     string `json:"public"`
	RemoteAddr string `json:"remote_addr,omitempty"`
	Note       string `json:"note,omitempty"`
}

type outConstants struct {
	Magic           string `json:"magic_hex"`
	DiscoMagic      string `json:"disco_magic_hex"`
	ProtocolVersion int    `json:"protocol_version"`
	MaxPacketSize   int    `json:"max_packet_size"`
}

type outFrame struct {
	Name      string `json:"name"`
	Direction string `json:"direction"` // "s2c" or "c2s"
	Client    string `json:"client"`    // whose connection
	Hex       string `json:"hex"`       // full frame incl. 5-byte header
	Plaintext string `json:"plaintext,omitempty"`
	Note      string `json:"note"`
}

type frame struct {
	typ     derp.FrameType
	payload []byte
	raw     []byte
}

func splitFrames(b []byte) []frame {
	var fs []frame
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if len(b) < 5+n {
			log.Fatalf("truncated frame: type %#x len %d, have %d", b[0], n, len(b)-5)
		}
		fs = append(fs, frame{typ: derp.FrameType(b[0]), payload: b[5 : 5+n], raw: b[:5+n]})
		b = b[5+n:]
	}
	if len(b) != 0 {
		log.Fatalf("%d trailing bytes", len(b))
	}
	return fs
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("goldens: ")

	serverPriv := fixedNodeKey("server")
	meshKeyRaw := sha256.Sum256([]byte("derpfleet golden vectors: mesh key"))
	meshKeyHex := hex.EncodeToString(meshKeyRaw[:])
	meshKey, err := key.ParseDERPMesh(meshKeyHex)
	if err != nil {
		log.Fatal(err)
	}

	s := derpserver.New(serverPriv, func(format string, args ...any) {
		log.Printf("server: "+format, args...)
	})
	if err := s.SetMeshKey(meshKeyHex); err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dial := func(name, remoteAddr string, opts ...derp.ClientOpt) *peer {
		p := &peer{name: name, priv: fixedNodeKey(name), remoteAddr: remoteAddr}
		p.pub = p.priv.Public()
		cli, srv := net.Pipe()
		go s.Accept(ctx, srv, bufio.NewReadWriter(bufio.NewReader(srv), bufio.NewWriter(srv)), remoteAddr)
		p.conn = &recConn{Conn: cli}
		brw := bufio.NewReadWriter(bufio.NewReader(p.conn), bufio.NewWriter(p.conn))
		p.conn.SetDeadline(time.Now().Add(10 * time.Second))
		p.dc, err = derp.NewClient(p.priv, p.conn, brw, log.Printf, opts...)
		if err != nil {
			log.Fatalf("%s: NewClient: %v", name, err)
		}
		p.conn.SetDeadline(time.Time{})
		if _, ok := recv(p).(derp.ServerInfoMessage); !ok {
			log.Fatalf("%s: first message is not ServerInfo", name)
		}
		return p
	}

	// a, b: regular clients as magicsock creates them (CanAckPings true).
	a := dial("a", "203.0.113.10:41641", derp.CanAckPings(true))
	b := dial("b", "[2001:db8::b]:443", derp.CanAckPings(true))

	must(a.dc.NotePreferred(true))
	must(a.dc.Send(b.pub, []byte("hello from a")))
	expectPacket(b, a.pub, "hello from a")
	must(b.dc.Send(a.pub, []byte("hello from b")))
	expectPacket(a, b.pub, "hello from b")

	pingData := [8]byte{'p', 'i', 'n', 'g', 0x01, 0x02, 0x03, 0x04}
	must(a.dc.SendPing(pingData))
	if m := recv(a); m != derp.PongMessage(pingData) {
		log.Fatalf("a: want pong, got %T", m)
	}
	// A client-originated Pong (what a client sends in reply to a server
	// Ping); the server skips it as an unknown frame type.
	must(a.dc.SendPong([8]byte{'p', 'o', 'n', 'g', 0x05, 0x06, 0x07, 0x08}))

	// m: a mesh watcher (ClientInfo carries the mesh key).
	m := dial("mesh", "198.51.100.7:3340", derp.MeshKey(meshKey))
	must(m.dc.WatchConnectionChanges())
	present := map[key.NodePublic]derp.PeerPresentMessage{}
	for len(present) < 3 { // a, b, and the watcher's own connection
		pp, ok := recv(m).(derp.PeerPresentMessage)
		if !ok {
			log.Fatalf("mesh: want PeerPresent")
		}
		present[pp.Key] = pp
	}

	// Mesh ForwardPacket on behalf of a client "z" that lives elsewhere.
	zpub := fixedNodeKey("z").Public()
	must(m.dc.ForwardPacket(zpub, a.pub, []byte("forwarded from z")))
	expectPacket(a, zpub, "forwarded from z")

	// Disco-looking packet to an unknown key: PeerGone NotHere.
	unknown := fixedNodeKey("unknown").Public()
	disco := append([]byte("TS\xf0\x9f\x92\xac"), bytes.Repeat([]byte{0xd1}, 56)...)
	must(a.dc.Send(unknown, disco))
	if pg, ok := recv(a).(derp.PeerGoneMessage); !ok || pg.Peer != unknown || pg.Reason != derp.PeerGoneReasonNotHere {
		log.Fatalf("a: want PeerGone NotHere")
	}

	// b leaves: a (which received from b) and the watcher get PeerGone.
	b.conn.Close()
	if pg, ok := recv(a).(derp.PeerGoneMessage); !ok || pg.Peer != b.pub || pg.Reason != derp.PeerGoneReasonDisconnected {
		log.Fatalf("a: want PeerGone Disconnected")
	}
	if pg, ok := recv(m).(derp.PeerGoneMessage); !ok || pg.Peer != b.pub {
		log.Fatalf("mesh: want PeerGone for b")
	}

	// KeepAlive.
	keepAliveNote := "server KeepAlive, empty payload; captured from the server after its 60 s (+ jitter < 5 s) ticker fired"
	var synthKA []byte
	if *synthKeepAlive {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		must(derp.WriteFrameHeader(bw, derp.FrameKeepAlive, 0))
		must(bw.Flush())
		synthKA = buf.Bytes()
		keepAliveNote = "server KeepAlive, empty payload; written with derp.WriteFrameHeader(bw, FrameKeepAlive, 0) as the server does (-synth-keepalive)"
	} else {
		log.Printf("waiting up to 70 s for the server's KeepAlive ...")
		deadline := time.Now().Add(70 * time.Second)
		for {
			if time.Now().After(deadline) {
				log.Fatal("no KeepAlive within 70 s")
			}
			if _, ok := recvTimeout(a, time.Until(deadline)).(derp.KeepAliveMessage); ok {
				break
			}
		}
	}

	// Mesh ClosePeer: the server closes a's connection.
	must(m.dc.ClosePeer(a.pub))
	a.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.dc.Recv(); err == nil {
		log.Fatal("a: expected connection closed after ClosePeer")
	}

	// ---- assemble output ----
	names := map[key.NodePublic]string{a.pub: "a", b.pub: "b", m.pub: "mesh", zpub: "z", unknown: "unknown"}
	o := out{
		TailscaleVersion: tailscaleVersion(),
		Generator:        "tests/go/cmd/goldens (go run ./cmd/goldens)",
		ServerPrivate:    text(serverPriv),
		ServerPublic:     text(serverPriv.Public()),
		MeshKey:          meshKeyHex,
		Constants: outConstants{
			Magic:           hex.EncodeToString([]byte(derp.Magic)),
			DiscoMagic:      hex.EncodeToString([]byte("TS\xf0\x9f\x92\xac")),
			ProtocolVersion: derp.ProtocolVersion,
			MaxPacketSize:   derp.MaxPacketSize,
		},
	}
	for _, p := range []*peer{a, b, m} {
		note := "regular client (derp.CanAckPings(true), as magicsock sets it)"
		if p == m {
			note = "mesh watcher (derp.MeshKey(mesh_key)); connects with its own node key"
		}
		o.Clients = append(o.Clients, outClient{Name: p.name, Private: text(p.priv), Public: text(p.pub), RemoteAddr: p.remoteAddr, Note: note})
	}
	o.Clients = append(o.Clients,
		outClient{Name: "z", Private: text(fixedNodeKey("z")), Public: text(zpub), Note: "never connects; source of the mesh ForwardPacket"},
		outClient{Name: "unknown", Private: text(fixedNodeKey("unknown")), Public: text(unknown), Note: "never connects; destination of the disco packet that yields PeerGone NotHere"},
	)

	seen := map[string]bool{}
	add := func(name, dir string, p *peer, f frame, plaintext, note string) {
		if seen[name] {
			return
		}
		seen[name] = true
		o.Frames = append(o.Frames, outFrame{Name: name, Direction: dir, Client: p.name, Hex: hex.EncodeToString(f.raw), Plaintext: plaintext, Note: note})
	}
	classify := func(p *peer) {
		rx, tx := p.conn.streams()
		for _, f := range splitFrames(rx) {
			switch f.typ {
			case derp.FrameServerKey:
				add("server_key", "s2c", p, f, "", "ServerKey: magic \"DERP🔑\" (8 bytes) ‖ server public key (32)")
			case derp.FrameServerInfo:
				pt, ok := p.priv.OpenFrom(serverPriv.Public(), f.payload)
				if !ok {
					log.Fatalf("cannot open ServerInfo for %s", p.name)
				}
				add("server_info", "s2c", p, f, string(pt), "ServerInfo: nonce (24) ‖ NaCl box (tag 16 ‖ ciphertext) of the JSON, sealed server_private -> client a public; nonce random")
			case derp.FrameRecvPacket:
				src := names[key.NodePublicFromRaw32(mem.B(f.payload[:32]))]
				if src == "z" {
					add("recv_packet_forwarded", "s2c", p, f, "", "RecvPacket of a mesh-forwarded packet: source key is the original sender z, not the mesh peer")
				} else {
					add("recv_packet", "s2c", p, f, "", fmt.Sprintf("RecvPacket (v2): source key (%s) ‖ packet", src))
				}
			case derp.FrameKeepAlive:
				add("keep_alive", "s2c", p, f, "", keepAliveNote)
			case derp.FramePeerGone:
				who := names[key.NodePublicFromRaw32(mem.B(f.payload[:32]))]
				switch {
				case p == m:
					add("peer_gone_watcher", "s2c", p, f, "", "PeerGone sent to a mesh watcher when "+who+"'s last connection closed; reason 0")
				case f.payload[32] == byte(derp.PeerGoneReasonNotHere):
					add("peer_gone_not_here", "s2c", p, f, "", "PeerGone(unknown, NotHere=1) in reply to a disco-looking SendPacket to an unknown key")
				default:
					add("peer_gone_disconnected", "s2c", p, f, "", "PeerGone("+who+", Disconnected=0): "+who+" had sent to this client and left")
				}
			case derp.FramePeerPresent:
				who := names[key.NodePublicFromRaw32(mem.B(f.payload[:32]))]
				pp := present[key.NodePublicFromRaw32(mem.B(f.payload[:32]))]
				add("peer_present_"+who, "s2c", p, f, "", fmt.Sprintf("PeerPresent to a mesh watcher: key ‖ IP (16, v4-mapped) ‖ port (2) ‖ flags (1); here %v flags %#02x", pp.IPPort, byte(pp.Flags)))
			case derp.FramePong:
				add("pong", "s2c", p, f, "", "Pong echoing the client's Ping data")
			default:
				log.Fatalf("unexpected s2c frame type %#x for %s", f.typ, p.name)
			}
		}
		for _, f := range splitFrames(tx) {
			switch f.typ {
			case derp.FrameClientInfo:
				pt, ok := serverPriv.OpenFrom(key.NodePublicFromRaw32(mem.B(f.payload[:32])), f.payload[32:])
				if !ok {
					log.Fatalf("cannot open ClientInfo of %s", p.name)
				}
				if p == m {
					add("client_info_mesh", "c2s", p, f, string(pt), "ClientInfo of the mesh watcher: includes meshKey")
				} else {
					add("client_info", "c2s", p, f, string(pt), "ClientInfo: client public key (32) ‖ nonce (24) ‖ NaCl box of the JSON, sealed client private -> server public; nonce random")
				}
			case derp.FrameSendPacket:
				dst := names[key.NodePublicFromRaw32(mem.B(f.payload[:32]))]
				if dst == "unknown" {
					add("send_packet_disco_unknown", "c2s", p, f, "", "SendPacket of a minimal disco-looking packet (magic ‖ 56 bytes = 62) to an unknown key")
				} else {
					add("send_packet", "c2s", p, f, "", "SendPacket: destination key ("+dst+") ‖ packet")
				}
			case derp.FrameNotePreferred:
				add("note_preferred", "c2s", p, f, "", "NotePreferred(true)")
			case derp.FramePing:
				add("ping", "c2s", p, f, "", "client Ping, 8 bytes of data")
			case derp.FramePong:
				add("client_pong", "c2s", p, f, "", "client Pong (reply format to a server Ping); servers skip it")
			case derp.FrameWatchConns:
				add("watch_conns", "c2s", p, f, "", "WatchConns (mesh only), empty payload")
			case derp.FrameForwardPacket:
				add("forward_packet", "c2s", p, f, "", "ForwardPacket (mesh only): src key (z) ‖ dst key (a) ‖ packet")
			case derp.FrameClosePeer:
				add("close_peer", "c2s", p, f, "", "ClosePeer (mesh only): key of the peer to disconnect (a)")
			default:
				log.Fatalf("unexpected c2s frame type %#x for %s", f.typ, p.name)
			}
		}
	}
	classify(a)
	classify(b)
	classify(m)
	if synthKA != nil {
		add("keep_alive", "s2c", a, frame{raw: synthKA}, "", keepAliveNote)
	}
	// Fixed output order (stream order differs from run to run for the
	// PeerPresent flood, which comes from a map iteration).
	order := []string{
		"server_key", "client_info", "server_info", "note_preferred", "send_packet", "recv_packet",
		"ping", "pong", "client_pong", "send_packet_disco_unknown", "peer_gone_not_here",
		"peer_gone_disconnected", "keep_alive",
		"client_info_mesh", "watch_conns", "peer_present_a", "peer_present_b", "peer_present_mesh",
		"peer_gone_watcher", "forward_packet", "recv_packet_forwarded", "close_peer",
	}
	byName := map[string]outFrame{}
	for _, f := range o.Frames {
		byName[f.Name] = f
	}
	if len(byName) != len(order) {
		log.Fatalf("captured %d distinct frames, want %d", len(byName), len(order))
	}
	o.Frames = o.Frames[:0]
	for _, name := range order {
		f, ok := byName[name]
		if !ok {
			log.Fatalf("frame %q not captured", name)
		}
		o.Frames = append(o.Frames, f)
	}

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	must(enc.Encode(o))
}

func recv(p *peer) derp.ReceivedMessage { return recvTimeout(p, 10*time.Second) }

func recvTimeout(p *peer, d time.Duration) derp.ReceivedMessage {
	type res struct {
		m   derp.ReceivedMessage
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := p.dc.Recv()
		if rp, ok := m.(derp.ReceivedPacket); ok {
			rp.Data = bytes.Clone(rp.Data)
			m = rp
		}
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			log.Fatalf("%s: Recv: %v", p.name, r.err)
		}
		return r.m
	case <-time.After(d):
		log.Fatalf("%s: Recv timed out after %v", p.name, d)
		return nil
	}
}

func expectPacket(p *peer, src key.NodePublic, data string) {
	rp, ok := recv(p).(derp.ReceivedPacket)
	if !ok || rp.Source != src || string(rp.Data) != data {
		log.Fatalf("%s: want packet %q", p.name, data)
	}
}

func text(k interface{ MarshalText() ([]byte, error) }) string {
	b, err := k.MarshalText()
	if err != nil {
		log.Fatal(err)
	}
	return string(b)
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// tailscaleVersion reports the tailscale.com module version compiled in.
func tailscaleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "tailscale.com" {
				return d.Version
			}
		}
	}
	return "unknown"
}
