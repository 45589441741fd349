package interop

// A mixed region: one node is $DERPER_BIN, the other Tailscale's derper
// ($TAILSCALE_DERPER_BIN), meshed with one key over TLS. Each node's
// --mesh-with names both (each skips itself by server key) and verifies the
// other against the system roots, which $SSL_CERT_FILE points at a test CA:
// exactly how Tailscale's derper meshes in production. Tailscale's derphttp
// clients on each node must reach each other both ways, and PeerGone must
// cross the mesh in both directions. With DERPER_BIN set to Tailscale's
// derper too, this is a Go-only region: the suite validates itself.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// meshTimeout bounds route convergence: Tailscale's derper retries a failed
// mesh dial every 5 s.
const meshTimeout = 20 * time.Second

// testCA is a CA and one leaf for "localhost" and 127.0.0.1 that every node serves.
type testCA struct {
	caPEM   string // path of the CA certificate (for SSL_CERT_FILE)
	leafPEM []byte
	keyPEM  []byte
	pin     string // sha256-raw:<hex> of the leaf
	pool    *x509.CertPool
}

func newTestCA(t *testing.T, dir string) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mesh test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{
		caPEM:   filepath.Join(dir, "ca.pem"),
		leafPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pool:    x509.NewCertPool(),
	}
	sum := sha256.Sum256(leafDER)
	ca.pin = "sha256-raw:" + hex.EncodeToString(sum[:])
	ca.pool.AddCert(caCert)
	caBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(ca.caPEM, caBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// startMeshNode starts bin as a TLS node for "localhost" on port, meshed with
// meshWith, trusting only the test CA.
func startMeshNode(t *testing.T, bin, name string, port int, ca *testCA, psk, meshWith string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{
		t:        t,
		mode:     modeTLS,
		dir:      dir,
		port:     port,
		stunPort: freeUDPPort(t),
		keyPath:  filepath.Join(dir, "derper.key"),
		certDir:  filepath.Join(dir, "certs"),
		tlsName:  "localhost",
		certPin:  ca.pin,
		certPool: ca.pool,
		output:   &syncBuffer{},
		exited:   make(chan struct{}),
	}
	if err := os.MkdirAll(s.certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for file, b := range map[string][]byte{"localhost.crt": ca.leafPEM, "localhost.key": ca.keyPEM} {
		if err := os.WriteFile(filepath.Join(s.certDir, file), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.priv = key.NewNode()
	s.pub = s.priv.Public()
	writeKeyFile(t, s.keyPath, s.priv)
	args := []string{
		"-a", s.addr(), "-c", s.keyPath, "-http-port", "-1", "-stun=false",
		"-certmode", "manual", "-hostname", "localhost", "-certdir", s.certDir,
		"-mesh-psk-file", psk, "-mesh-with", meshWith,
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout = s.output
	s.cmd.Stderr = s.output
	emptyDir := t.TempDir()
	// Only the test CA may vouch for a peer.
	s.cmd.Env = append(os.Environ(), "HOME="+dir, "SSL_CERT_FILE="+ca.caPEM, "SSL_CERT_DIR="+emptyDir)
	s.cmd.Dir = dir
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() { s.stop() })
	// Ready when /derp/probe answers over TLS for "localhost", verified by the CA.
	hc := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}},
	}
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/derp/probe", port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-s.exited:
			t.Fatalf("%s exited: %v\n%s", name, s.waitErr, s.output.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v\n%s", name, err, s.output.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("started %s: %s %s", name, bin, strings.Join(args, " "))
	return s
}

// waitRoute sends from `from` to `to` every 100 ms until a packet arrives:
// the mesh has learnt where `to` lives. Returns how long that took.
func waitRoute(t *testing.T, from, to *client) time.Duration {
	t.Helper()
	start := time.Now()
	for i := 0; ; i++ {
		if time.Since(start) > meshTimeout {
			t.Fatalf("%s → %s: no delivery across the mesh in %v", from.name, to.name, meshTimeout)
		}
		probe := []byte(fmt.Sprintf("route probe %d", i))
		from.send(to.pub, probe)
		m, err := to.tryNext(100 * time.Millisecond)
		if err != nil {
			continue
		}
		if p, ok := m.(derp.ReceivedPacket); ok && p.Source == from.pub {
			// Drain late copies of earlier probes.
			for {
				if _, err := to.tryNext(200 * time.Millisecond); err != nil {
					break
				}
			}
			return time.Since(start)
		}
	}
}

func TestMixedMesh(t *testing.T) {
	ours := derperBin(t)
	theirs := os.Getenv("TAILSCALE_DERPER_BIN")
	if theirs == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TAILSCALE_DERPER_BIN must name Tailscale's derper under CI")
		}
		t.Skip("TAILSCALE_DERPER_BIN not set: mixed mesh test skipped")
	}
	dir := t.TempDir()
	ca := newTestCA(t, dir)
	psk := filepath.Join(dir, "mesh.psk")
	if err := os.WriteFile(psk, []byte(strings.Repeat("6d", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p0, p1 := freeTCPPort(t), freeTCPPort(t)
	meshWith := fmt.Sprintf("localhost:%d,localhost:%d", p0, p1)
	// DERPER_BIN first: Tailscale's node then finds it listening at once.
	n0 := startMeshNode(t, ours, "node0 ("+flavor()+")", p0, ca, psk, meshWith)
	n1 := startMeshNode(t, theirs, "node1 (tailscale)", p1, ca, psk, meshWith)

	a := connect(t, n0, "a@node0", key.NodePrivate{})
	b := connect(t, n1, "b@node1", key.NodePrivate{})
	t.Logf("node0 → node1 route after %v", waitRoute(t, a, b))
	t.Logf("node1 → node0 route after %v", waitRoute(t, b, a))
	for _, size := range []int{1, 1300, 64 << 10} {
		data := make([]byte, size)
		rand.Read(data)
		a.send(b.pub, data)
		b.expectPacket(a.pub, data)
		b.send(a.pub, data)
		a.expectPacket(b.pub, data)
	}

	// PeerGone from Tailscale's node to ours: b leaves node1; a, who received
	// from b, hears it through node0's mesh link.
	b.Close()
	a.expectPeerGone(b.pub, derp.PeerGoneReasonDisconnected)

	// And from ours to Tailscale's: c leaves node0; d on node1, who received
	// from c, hears it through Tailscale's mesh link to node0.
	c := connect(t, n0, "c@node0", key.NodePrivate{})
	d := connect(t, n1, "d@node1", key.NodePrivate{})
	waitRoute(t, c, d)
	c.Close()
	d.expectPeerGone(c.pub, derp.PeerGoneReasonDisconnected)
}
