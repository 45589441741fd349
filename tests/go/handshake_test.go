package interop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// TestHandshake connects Tailscale's derphttp client (URL client over plain
// HTTP; region client with a sha256-raw CertName pin over TLS) and checks the
// server key and the ServerInfo message. In TLS mode it also checks the
// presented chain: exactly [leaf, metacert], TLS 1.3, no ALPN. With TLS 1.3
// and a parseable metacert the real client uses fast start (sends
// Derp-Fast-Start: 1 and never reads an HTTP response); had the server sent
// a 101 anyway, the client would parse "HTTP/1.1..." as a frame header and
// fail, so receiving ServerInfo here also proves fast start works.
func TestHandshake(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		c := connect(t, s, "a", key.NodePrivate{})
		// connect checked ServerPublicKey == key from the -c file and that
		// the first message is ServerInfo. The open-source server never sets
		// the token bucket fields.
		if c.serverInfo != (derp.ServerInfoMessage{}) {
			t.Errorf("ServerInfo = %+v, want zero token bucket fields", c.serverInfo)
		}

		if s.mode != modeTLS {
			if _, ok := c.c.TLSConnectionState(); ok {
				t.Errorf("plain mode: unexpected TLS state")
			}
			return
		}
		cs, ok := c.c.TLSConnectionState()
		if !ok {
			t.Fatal("TLS mode: no TLS connection state")
		}
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("TLS version = %x, want TLS 1.3 (needed for fast start)", cs.Version)
		}
		if cs.NegotiatedProtocol != "" {
			t.Errorf("ALPN = %q, want none (DERP clients send no ALPN)", cs.NegotiatedProtocol)
		}
		checkChain(t, s, cs.PeerCertificates)
	})
}

// checkChain asserts the chain is [generated leaf, metacert].
func checkChain(t *testing.T, s *server, certs []*x509.Certificate) {
	t.Helper()
	if len(certs) != 2 {
		t.Fatalf("server presented %d certificates, want 2 (leaf + metacert)", len(certs))
	}
	if !bytes.Equal(certs[0].Raw, s.certDER) {
		t.Errorf("leaf certificate differs from %s/127.0.0.1.crt", s.certDir)
	}
	meta := certs[1]
	wantCN := "derpkey" + s.pub.UntypedHexString()
	if meta.Subject.CommonName != wantCN {
		t.Errorf("metacert CN = %q, want %q", meta.Subject.CommonName, wantCN)
	}
	if meta.SerialNumber.Int64() != derp.ProtocolVersion {
		t.Errorf("metacert serial = %v, want %d", meta.SerialNumber, derp.ProtocolVersion)
	}
	if !meta.BasicConstraintsValid {
		t.Errorf("metacert BasicConstraintsValid = false, want true")
	}
	if meta.PublicKeyAlgorithm != x509.Ed25519 {
		t.Errorf("metacert key algorithm = %v, want Ed25519", meta.PublicKeyAlgorithm)
	}
	now := time.Now()
	if !meta.NotBefore.Before(now) || !meta.NotAfter.After(now) {
		t.Errorf("metacert validity %v..%v does not cover now", meta.NotBefore, meta.NotAfter)
	}
}

// TestKeyFileGenerated starts the server with -c pointing at a file that does
// not exist (in a directory that does not exist). derper creates it: JSON
// {"PrivateKey": "privkey:<hex>"} indented with one tab, no trailing newline,
// mode 0600, parent directories created.
func TestKeyFileGenerated(t *testing.T) {
	s := startServer(t, serverOpts{mode: modePlain, keyFileAbsent: true, keyPathRel: "sub/dir/derper.key"})
	st, err := os.Stat(s.keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %o, want 600", perm)
	}
	b, err := os.ReadFile(s.keyPath)
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n\t\"PrivateKey\": \"privkey:" + hex.EncodeToString(rawPriv(s.priv)) + "\"\n}"
	if string(b) != want {
		t.Errorf("key file contents = %q, want %q", b, want)
	}
	connect(t, s, "a", key.NodePrivate{}) // checks ServerPublicKey == derived from file
}

func rawPriv(k key.NodePrivate) []byte {
	r := k.Raw32()
	return r[:]
}

// TestTLSGeneratedCert checks what -certmode manual -hostname 127.0.0.1 writes
// to -certdir when no cert exists there: 127.0.0.1.crt (PEM "CERTIFICATE",
// mode 0644) and 127.0.0.1.key (PEM "EC PRIVATE KEY", mode 0600), an ECDSA
// P-256 self-signed cert with CN and IP SAN 127.0.0.1, valid for one year.
// A second server started on the same -certdir reuses the files.
func TestTLSGeneratedCert(t *testing.T) {
	s := startServer(t, serverOpts{mode: modeTLS})
	crtPath := filepath.Join(s.certDir, "127.0.0.1.crt")
	keyPath := filepath.Join(s.certDir, "127.0.0.1.key")
	for path, wantPerm := range map[string]os.FileMode{crtPath: 0o644, keyPath: 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != wantPerm {
			t.Errorf("%s mode = %o, want %o", filepath.Base(path), st.Mode().Perm(), wantPerm)
		}
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(keyPEM), "-----BEGIN EC PRIVATE KEY-----\n") {
		t.Errorf("key file does not start with an EC PRIVATE KEY PEM block: %.40q", keyPEM)
	}
	cert, err := x509.ParseCertificate(s.certDER)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "127.0.0.1" {
		t.Errorf("CN = %q, want 127.0.0.1", cert.Subject.CommonName)
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(cert.DNSNames) != 0 {
		t.Errorf("SANs: IPs %v DNS %v, want IP 127.0.0.1 only", cert.IPAddresses, cert.DNSNames)
	}
	pk, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pk.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", cert.PublicKey)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil || !bytes.Equal(cert.RawIssuer, cert.RawSubject) {
		t.Errorf("not self-signed: %v", err)
	}
	if !cert.BasicConstraintsValid || cert.IsCA {
		t.Errorf("BasicConstraintsValid=%v IsCA=%v, want true/false", cert.BasicConstraintsValid, cert.IsCA)
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got < 364*24*time.Hour || got > 367*24*time.Hour {
		t.Errorf("validity %v, want about one year", got)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Errorf("KeyUsage = %v, want DigitalSignature|KeyEncipherment", cert.KeyUsage)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ExtKeyUsage = %v, want [ServerAuth]", cert.ExtKeyUsage)
	}

	// Restart on the same cert dir: the existing cert must be served.
	pin := s.certPin
	s.stop()
	s2 := startServer(t, serverOpts{mode: modeTLS, certDir: s.certDir})
	if s2.certPin != pin {
		t.Errorf("restarted server generated a new cert (%s), want reuse of %s", s2.certPin, pin)
	}
	c := connect(t, s2, "a", key.NodePrivate{})
	cs, _ := c.c.TLSConnectionState()
	if cs == nil || !bytes.Equal(cs.PeerCertificates[0].Raw, s.certDER) {
		t.Errorf("restarted server does not serve the existing cert")
	}
}

// TestUpgradeResponse checks the exact 101 response to a non-fast-start
// upgrade, and that the ServerKey frame follows it.
func TestUpgradeResponse(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		for _, upgrade := range []string{"DERP", "derp", "WebSocket"} {
			t.Run(upgrade, func(t *testing.T) {
				nc := rawDial(t, s)
				nc.SetDeadline(time.Now().Add(opTimeout))
				req := strings.Replace(upgradeRequest(s.addr()), "Upgrade: DERP", "Upgrade: "+upgrade, 1)
				if _, err := io.WriteString(nc, req); err != nil {
					t.Fatal(err)
				}
				want := "HTTP/1.1 101 Switching Protocols\r\n" +
					"Upgrade: DERP\r\n" +
					"Connection: Upgrade\r\n" +
					"Derp-Version: 2\r\n" +
					"Derp-Public-Key: " + s.pub.UntypedHexString() + "\r\n" +
					"\r\n"
				got := make([]byte, len(want)+45)
				if _, err := io.ReadFull(nc, got); err != nil {
					t.Fatalf("reading 101 + ServerKey: %v (got %q)", err, got)
				}
				if string(got[:len(want)]) != want {
					t.Fatalf("upgrade response:\n got %q\nwant %q", got[:len(want)], want)
				}
				checkServerKeyFrame(t, s, got[len(want):])
			})
		}
	})
}

func checkServerKeyFrame(t *testing.T, s *server, b []byte) {
	t.Helper()
	want := append([]byte{0x01, 0x00, 0x00, 0x00, 0x28}, derp.Magic...)
	pub := s.pub.Raw32()
	want = append(want, pub[:]...)
	if !bytes.Equal(b, want) {
		t.Fatalf("ServerKey frame = %x, want %x", b, want)
	}
}

// clientInfoFrame builds the ClientInfo frame exactly as derp.Client does:
// pub[32] ‖ nonce[24] ‖ box(JSON) sealed to the server key.
func clientInfoFrame(priv key.NodePrivate, serverPub key.NodePublic) []byte {
	msg, _ := json.Marshal(derp.ClientInfo{Version: derp.ProtocolVersion, CanAckPings: true})
	box := priv.SealTo(serverPub, msg)
	payload := priv.Public().AppendTo(nil)
	payload = append(payload, box...)
	frame := []byte{byte(derp.FrameClientInfo), 0, 0, 0, 0}
	frame[1], frame[2], frame[3], frame[4] = byte(len(payload)>>24), byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	return append(frame, payload...)
}

// TestFastStartRaw writes the upgrade request with "Derp-Fast-Start: 1" and
// the ClientInfo frame in a single write (as the real client does), and
// asserts no HTTP response comes back: the first bytes are the ServerKey
// frame, then a ServerInfo frame we can open. Packets then flow.
func TestFastStartRaw(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		peer := connect(t, s, "peer", key.NodePrivate{})
		priv := key.NewNode()
		nc := rawDial(t, s)
		nc.SetDeadline(time.Now().Add(opTimeout))
		req := upgradeRequest(s.addr(), "Derp-Fast-Start: 1")
		if _, err := nc.Write(append([]byte(req), clientInfoFrame(priv, s.pub)...)); err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 45)
		if _, err := io.ReadFull(nc, first); err != nil {
			t.Fatalf("reading ServerKey: %v (got %q)", err, first)
		}
		if bytes.HasPrefix(first, []byte("HTTP/")) {
			t.Fatalf("server sent an HTTP response despite Derp-Fast-Start: %q", first)
		}
		checkServerKeyFrame(t, s, first)

		hdr := make([]byte, 5)
		if _, err := io.ReadFull(nc, hdr); err != nil {
			t.Fatal(err)
		}
		if derp.FrameType(hdr[0]) != derp.FrameServerInfo {
			t.Fatalf("second frame type %#x, want ServerInfo 0x03", hdr[0])
		}
		n := int(hdr[1])<<24 | int(hdr[2])<<16 | int(hdr[3])<<8 | int(hdr[4])
		body := make([]byte, n)
		if _, err := io.ReadFull(nc, body); err != nil {
			t.Fatal(err)
		}
		msg, ok := priv.OpenFrom(s.pub, body)
		if !ok {
			t.Fatalf("cannot open ServerInfo box (%d bytes)", n)
		}
		if string(msg) != `{"version":2}` {
			t.Errorf("ServerInfo JSON = %s, want {\"version\":2}", msg)
		}
		if n != 24+16+len(msg) {
			t.Errorf("ServerInfo length %d, want nonce(24)+tag(16)+%d", n, len(msg))
		}

		// The connection is registered: a packet from peer arrives as v2
		// RecvPacket (source key prefix).
		peer.send(priv.Public(), []byte("fast"))
		want := []byte{byte(derp.FrameRecvPacket), 0, 0, 0, 36}
		pp := peer.pub.Raw32()
		want = append(append(want, pp[:]...), "fast"...)
		got := make([]byte, len(want))
		if _, err := io.ReadFull(nc, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("RecvPacket frame = %x, want %x", got, want)
		}
	})
}
