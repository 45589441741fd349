// Package interop runs Tailscale's own DERP client code (tailscale.com/derp,
// tailscale.com/derp/derphttp, pinned in go.mod) against a DERP server binary.
//
// The binary is named by $DERPER_BIN. It is started with flags that
// Tailscale's cmd/derper also accepts, so the suite can be validated against
// Tailscale's derper and then run unchanged against ours:
//
//	DERPER_BIN=$(../../scripts/install-go-tools.sh --print-derper) \
//	  go test -tags ts_debug_websockets -count=1 -timeout 300s ./...
//
// $DERPER_FLAVOR (tailscale|ours) only matters for tests that document a
// behaviour one implementation has and the other lacks.
package interop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/net/tlsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Timeouts. Everything in this suite is bounded by one of these.
const (
	startTimeout = 15 * time.Second // server start until /derp/probe answers
	opTimeout    = 5 * time.Second  // one connect / receive / request
	quietWindow  = 300 * time.Millisecond
)

// mode selects how the server is started and how clients reach it.
type mode string

const (
	modePlain mode = "plain" // plain HTTP on -a
	modeTLS   mode = "tls"   // -certmode manual -hostname 127.0.0.1, self-signed IP cert
)

var allModes = []mode{modePlain, modeTLS}

// forEachMode runs f as a subtest per mode, each against a fresh server.
func forEachMode(t *testing.T, modes []mode, f func(t *testing.T, s *server)) {
	t.Helper()
	for _, m := range modes {
		t.Run(string(m), func(t *testing.T) {
			s := startServer(t, serverOpts{mode: m})
			f(t, s)
		})
	}
}

// flavor returns $DERPER_FLAVOR ("tailscale" or "ours"). If unset, it is
// detected once from "$DERPER_BIN --version": Tailscale's derper prints a
// bare version such as "1.102.5-ERR-BuildInfo"; anything else is "ours".
func flavor() string {
	flavorOnce.Do(func() {
		switch v := os.Getenv("DERPER_FLAVOR"); v {
		case "tailscale", "ours":
			flavorVal = v
			return
		case "":
		default:
			panic(fmt.Sprintf("DERPER_FLAVOR=%q: want tailscale or ours", v))
		}
		flavorVal = "ours"
		bin := os.Getenv("DERPER_BIN")
		if bin == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, bin, "--version").Output()
		if tailscaleVersionRE.Match(out) {
			flavorVal = "tailscale"
		}
	})
	return flavorVal
}

var (
	flavorOnce         sync.Once
	flavorVal          string
	tailscaleVersionRE = regexp.MustCompile(`^\d+\.\d+\.\d+`)
)

// skipForFlavor skips t if $DERPER_FLAVOR equals fl, with a reason.
func skipForFlavor(t *testing.T, fl, why string) {
	t.Helper()
	if flavor() == fl {
		t.Skipf("DERPER_FLAVOR=%s: %s", fl, why)
	}
}

// derperBin returns $DERPER_BIN or skips the test loudly.
func derperBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("DERPER_BIN")
	if bin == "" {
		t.Skip("DERPER_BIN not set: interop tests skipped " +
			"(e.g. DERPER_BIN=$(scripts/install-go-tools.sh --print-derper) for Tailscale's derper, " +
			"or DERPER_BIN=target/release/derper for ours)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("DERPER_BIN=%q: %v", bin, err)
	}
	return bin
}

// syncBuffer is a goroutine-safe bytes.Buffer (server output, client logs).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is one running DERP server process.
type server struct {
	t        testing.TB
	mode     mode
	dir      string
	port     int
	stunPort int
	keyPath  string
	certDir  string

	priv key.NodePrivate // from the key file
	pub  key.NodePublic

	// tlsName is the DERP node's HostName (SNI) in TLS mode: "127.0.0.1" unless set
	// (mesh tests serve a CA-issued certificate for "localhost").
	tlsName string

	// TLS mode only.
	certDER  []byte // leaf, as written to certDir/127.0.0.1.crt
	certPin  string // "sha256-raw:<hex>" of certDER
	certPool *x509.CertPool

	cmd     *exec.Cmd
	output  *syncBuffer
	exited  chan struct{}
	waitErr error
}

type serverOpts struct {
	mode mode
	// keyFileAbsent makes the harness not write the key file, so the server
	// must create it (Tailscale's derper does).
	keyFileAbsent bool
	// keyPathRel overrides the key file path (relative to the temp dir).
	keyPathRel string
	// certDir overrides -certdir (TLS mode), e.g. to reuse a generated cert.
	certDir string
	// oursArgs are appended when the server is ours (flags Tailscale's derper lacks).
	oursArgs []string
}

func (s *server) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// baseURL is the server's http:// or https:// origin.
func (s *server) baseURL() string {
	if s.mode == modeTLS {
		return "https://" + s.addr()
	}
	return "http://" + s.addr()
}

func (s *server) derpURL() string { return s.baseURL() + "/derp" }

// freeTCPPort and freeUDPPort pick a currently unused loopback port. There is
// a small race until the server binds; startServer retries on early exit.
func freeTCPPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t testing.TB) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// derperKeyFile is the JSON layout of derper's -c file.
type derperKeyFile struct {
	PrivateKey key.NodePrivate
}

func writeKeyFile(t testing.TB, path string, k key.NodePrivate) {
	t.Helper()
	b, err := json.MarshalIndent(derperKeyFile{PrivateKey: k}, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readKeyFile(t testing.TB, path string) key.NodePrivate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading key file: %v", err)
	}
	var kf derperKeyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		t.Fatalf("parsing key file %q: %v", b, err)
	}
	if kf.PrivateKey.IsZero() {
		t.Fatalf("key file %q has zero PrivateKey", b)
	}
	return kf.PrivateKey
}

// serverArgs is the exact command line used. Every flag here exists in
// Tailscale's cmd/derper v1.102.5.
func (s *server) serverArgs() []string {
	args := []string{
		"-a", s.addr(),
		"-c", s.keyPath,
		"-http-port", "-1",
		"-stun-port", strconv.Itoa(s.stunPort),
	}
	if s.mode == modeTLS {
		args = append(args,
			"-certmode", "manual",
			"-hostname", "127.0.0.1",
			"-certdir", s.certDir,
		)
	}
	return args
}

// startServer starts $DERPER_BIN and waits until it serves /derp/probe.
// The process is killed at test end; its output is logged if the test failed.
func startServer(t testing.TB, o serverOpts) *server {
	t.Helper()
	bin := derperBin(t)
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		s, err := tryStartServer(t, bin, o)
		if err == nil {
			return s
		}
		lastErr = err
		t.Logf("server start attempt %d failed: %v", attempt, err)
	}
	t.Fatalf("could not start %s: %v", bin, lastErr)
	return nil
}

func tryStartServer(t testing.TB, bin string, o serverOpts) (*server, error) {
	dir := t.TempDir()
	s := &server{
		t:        t,
		mode:     o.mode,
		dir:      dir,
		port:     freeTCPPort(t),
		stunPort: freeUDPPort(t),
		keyPath:  filepath.Join(dir, "derper.key"),
		certDir:  filepath.Join(dir, "certs"),
		output:   &syncBuffer{},
		exited:   make(chan struct{}),
	}
	if o.certDir != "" {
		s.certDir = o.certDir
	}
	if o.keyPathRel != "" {
		s.keyPath = filepath.Join(dir, o.keyPathRel)
	}
	if !o.keyFileAbsent {
		writeKeyFile(t, s.keyPath, key.NewNode())
	}

	args := s.serverArgs()
	if flavor() == "ours" {
		args = append(args, o.oursArgs...)
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout = s.output
	s.cmd.Stderr = s.output
	// HOME points into the temp dir so that Tailscale's derper does not pick
	// up a mesh key from $HOME/keys/derp-mesh.key or write caches elsewhere.
	s.cmd.Env = append(os.Environ(), "HOME="+dir)
	s.cmd.Dir = dir
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() { s.stop() })

	if err := s.waitReady(); err != nil {
		s.stop()
		return nil, fmt.Errorf("%v\n--- server output (%s %s) ---\n%s", err, bin, strings.Join(args, " "), s.output.String())
	}
	t.Logf("started %s %s (flavor %s)", bin, strings.Join(args, " "), flavor())

	s.priv = readKeyFile(t, s.keyPath)
	s.pub = s.priv.Public()
	return s, nil
}

// stop kills the server (SIGTERM, then SIGKILL after 3 s) and, if the test
// failed, logs its output.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(3 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if s.t.Failed() {
		s.t.Logf("--- server output (%s) ---\n%s", strings.Join(s.cmd.Args, " "), s.output.String())
	}
	s.cmd = nil
}

// waitReady polls GET /derp/probe until 200. In TLS mode it first waits for
// the generated certificate, then verifies the probe over TLS against it.
func (s *server) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("server exited early: %v", s.waitErr)
		default:
		}
		if s.mode == modeTLS && s.certDER == nil {
			if err := s.loadCert(); err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.baseURL()+"/derp/probe", nil)
		resp, err := s.httpClient().Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			return fmt.Errorf("GET /derp/probe: status %v", resp.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("server not ready after %v", startTimeout)
}

// loadCert reads certDir/127.0.0.1.crt, which the server writes when
// -certmode=manual -hostname=<IP> finds no cert there.
func (s *server) loadCert() error {
	b, err := os.ReadFile(filepath.Join(s.certDir, "127.0.0.1.crt"))
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return fmt.Errorf("no CERTIFICATE PEM block in 127.0.0.1.crt (yet)")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	s.certDER = blk.Bytes
	sum := sha256.Sum256(cert.Raw)
	s.certPin = "sha256-raw:" + hex.EncodeToString(sum[:])
	s.certPool = x509.NewCertPool()
	s.certPool.AddCert(cert)
	return nil
}

// tlsConfig trusts exactly the server's generated leaf (used by plain
// net/http and raw TLS tests; the DERP clients use the CertName pin instead).
func (s *server) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: s.certPool, ServerName: "127.0.0.1"}
}

// httpClient returns an HTTP client suitable for this server's mode.
func (s *server) httpClient() *http.Client {
	tr := &http.Transport{DisableKeepAlives: true}
	if s.mode == modeTLS {
		tr.TLSClientConfig = s.tlsConfig()
	}
	return &http.Client{
		Transport: tr,
		Timeout:   opTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// derpRegion is a one-node DERPMap region pointing at s, pinned to its cert.
func (s *server) derpRegion() *tailcfg.DERPRegion {
	return &tailcfg.DERPRegion{
		RegionID:   900,
		RegionCode: "test",
		RegionName: "interop test",
		Nodes: []*tailcfg.DERPNode{{
			Name:     "900a",
			RegionID: 900,
			HostName: s.hostName(),
			CertName: s.certPin,
			IPv4:     "127.0.0.1",
			IPv6:     "none",
			STUNPort: s.stunPort,
			DERPPort: s.port,
		}},
	}
}

// hostName is the name clients dial and send as SNI.
func (s *server) hostName() string {
	if s.tlsName != "" {
		return s.tlsName
	}
	return "127.0.0.1"
}

// derpMap wraps derpRegion.
func (s *server) derpMap() *tailcfg.DERPMap {
	return &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{900: s.derpRegion()}}
}

// ---- DERP clients ----

// testLogf returns a logf that buffers client logs and prints them only if
// the test fails (and never after the test completed).
func testLogf(t testing.TB, prefix string) func(string, ...any) {
	buf := &syncBuffer{}
	var mu sync.Mutex
	done := false
	t.Cleanup(func() {
		mu.Lock()
		done = true
		mu.Unlock()
		if t.Failed() && buf.String() != "" {
			t.Logf("--- %s client log ---\n%s", prefix, buf.String())
		}
	})
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		fmt.Fprintf(buf, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// client wraps a derphttp.Client with a receive goroutine.
type client struct {
	t    testing.TB
	name string
	priv key.NodePrivate
	pub  key.NodePublic
	c    *derphttp.Client

	serverInfo derp.ServerInfoMessage // first message received

	msgs chan derp.ReceivedMessage
	errc chan error // receives the terminal Recv error
	stop chan struct{}
	once sync.Once
}

// newDERPClient makes a derphttp client for s: a URL client in plain mode, a
// region client with the sha256-raw CertName pin in TLS mode.
func newDERPClient(t testing.TB, s *server, name string, priv key.NodePrivate) *derphttp.Client {
	t.Helper()
	logf := testLogf(t, name)
	if s.mode == modeTLS {
		reg := s.derpRegion()
		return derphttp.NewRegionClient(priv, logf, netmon.NewStatic(), func() *tailcfg.DERPRegion { return reg })
	}
	c, err := derphttp.NewClient(priv, s.derpURL(), logf, netmon.NewStatic())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// connect creates, connects and starts receiving on a client. It waits for
// and checks the ServerInfo message, so on return the server has registered
// the connection.
func connect(t testing.TB, s *server, name string, priv key.NodePrivate) *client {
	t.Helper()
	if priv.IsZero() {
		priv = key.NewNode()
	}
	dc := newDERPClient(t, s, name, priv)
	return startClient(t, s, name, priv, dc)
}

func startClient(t testing.TB, s *server, name string, priv key.NodePrivate, dc *derphttp.Client) *client {
	t.Helper()
	c := &client{
		t:    t,
		name: name,
		priv: priv,
		pub:  priv.Public(),
		c:    dc,
		msgs: make(chan derp.ReceivedMessage, 256),
		errc: make(chan error, 1),
		stop: make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := dc.Connect(ctx); err != nil {
		t.Fatalf("%s: Connect: %v", name, err)
	}
	if got := dc.ServerPublicKey(); got != s.pub {
		t.Fatalf("%s: ServerPublicKey = %v, want %v (from key file)", name, got, s.pub)
	}
	go c.recvLoop()
	t.Cleanup(c.Close)
	m := c.next(opTimeout)
	si, ok := m.(derp.ServerInfoMessage)
	if !ok {
		t.Fatalf("%s: first message = %T %v, want derp.ServerInfoMessage", name, m, m)
	}
	c.serverInfo = si
	return c
}

func (c *client) recvLoop() {
	for {
		m, err := c.c.Recv()
		if err != nil {
			c.errc <- err
			return
		}
		// ReceivedPacket.Data aliases the client's buffer; copy it.
		if p, ok := m.(derp.ReceivedPacket); ok {
			p.Data = bytes.Clone(p.Data)
			m = p
		}
		select {
		case c.msgs <- m:
		case <-c.stop:
			return
		}
	}
}

// Close closes the client; the receive loop ends with an error.
func (c *client) Close() {
	c.once.Do(func() {
		close(c.stop)
		c.c.Close()
	})
}

// next returns the next message that is not a KeepAlive, failing the test
// on timeout or receive error.
func (c *client) next(timeout time.Duration) derp.ReceivedMessage {
	c.t.Helper()
	m, err := c.tryNext(timeout)
	if err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
	return m
}

var errTimeout = errors.New("timeout")

// tryNext is next without failing; it returns errTimeout on timeout or the
// receive error if the connection broke.
func (c *client) tryNext(timeout time.Duration) (derp.ReceivedMessage, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case m := <-c.msgs:
			if _, ok := m.(derp.KeepAliveMessage); ok {
				continue
			}
			return m, nil
		case err := <-c.errc:
			c.errc <- err // sticky
			return nil, fmt.Errorf("recv error: %w", err)
		case <-timer.C:
			return nil, fmt.Errorf("%w after %v waiting for a message", errTimeout, timeout)
		}
	}
}

// expectQuiet asserts that nothing but KeepAlives arrives within d.
func (c *client) expectQuiet(d time.Duration) {
	c.t.Helper()
	m, err := c.tryNext(d)
	if err == nil {
		c.t.Fatalf("%s: unexpected message %T %s", c.name, m, describe(m))
	}
	if !errors.Is(err, errTimeout) {
		c.t.Fatalf("%s: %v", c.name, err)
	}
}

// expectPacket waits for a packet from src with exactly data.
func (c *client) expectPacket(src key.NodePublic, data []byte) {
	c.t.Helper()
	m := c.next(opTimeout)
	p, ok := m.(derp.ReceivedPacket)
	if !ok {
		c.t.Fatalf("%s: got %T %s, want ReceivedPacket", c.name, m, describe(m))
	}
	if p.Source != src {
		c.t.Fatalf("%s: packet source = %v, want %v", c.name, p.Source.ShortString(), src.ShortString())
	}
	if !bytes.Equal(p.Data, data) {
		c.t.Fatalf("%s: packet data (%d bytes) != sent (%d bytes)", c.name, len(p.Data), len(data))
	}
}

// expectPeerGone waits for a PeerGone about peer with the given reason.
func (c *client) expectPeerGone(peer key.NodePublic, reason derp.PeerGoneReasonType) {
	c.t.Helper()
	m := c.next(opTimeout)
	pg, ok := m.(derp.PeerGoneMessage)
	if !ok {
		c.t.Fatalf("%s: got %T %s, want PeerGoneMessage", c.name, m, describe(m))
	}
	if pg.Peer != peer || pg.Reason != reason {
		c.t.Fatalf("%s: PeerGone{%v, %d}, want {%v, %d}", c.name, pg.Peer.ShortString(), pg.Reason, peer.ShortString(), reason)
	}
}

// pingBarrier sends a Ping and waits for the matching Pong, proving the
// server processed every frame this client sent before it. Messages that
// arrive before the Pong are returned.
func (c *client) pingBarrier() []derp.ReceivedMessage {
	c.t.Helper()
	var data [8]byte
	copy(data[:], fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff))
	if err := c.c.SendPing(data); err != nil {
		c.t.Fatalf("%s: SendPing: %v", c.name, err)
	}
	var before []derp.ReceivedMessage
	for {
		m := c.next(opTimeout)
		if p, ok := m.(derp.PongMessage); ok && p == derp.PongMessage(data) {
			return before
		}
		before = append(before, m)
	}
}

func (c *client) send(dst key.NodePublic, data []byte) {
	c.t.Helper()
	if err := c.c.Send(dst, data); err != nil {
		c.t.Fatalf("%s: Send(%d bytes): %v", c.name, len(data), err)
	}
}

func describe(m derp.ReceivedMessage) string {
	switch m := m.(type) {
	case derp.ReceivedPacket:
		return fmt.Sprintf("{from %v, %d bytes}", m.Source.ShortString(), len(m.Data))
	case derp.PeerGoneMessage:
		return fmt.Sprintf("{peer %v, reason %d}", m.Peer.ShortString(), m.Reason)
	default:
		return fmt.Sprintf("%+v", m)
	}
}

// ---- raw connections (hand-written HTTP upgrade) ----

// rawDial opens a TCP (plain) or TLS (pinned, TLS 1.3) connection to s.
func rawDial(t testing.TB, s *server) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: opTimeout}
	nc, err := d.Dial("tcp", s.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if s.mode != modeTLS {
		return nc
	}
	conf := &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	tlsdial.SetConfigExpectedCertHash(conf, strings.TrimPrefix(s.certPin, "sha256-raw:"))
	tc := tls.Client(nc, conf)
	tc.SetDeadline(time.Now().Add(opTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	return tc
}

// upgradeRequest is the request derphttp writes (plus optional headers).
func upgradeRequest(host string, extra ...string) string {
	var b strings.Builder
	b.WriteString("GET /derp HTTP/1.1\r\n")
	b.WriteString("Host: " + host + "\r\n")
	b.WriteString("User-Agent: Go-http-client/1.1\r\n")
	b.WriteString("Connection: Upgrade\r\n")
	b.WriteString("Upgrade: DERP\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// rawUpgrade performs a non-fast-start upgrade and returns the 101 response
// and a buffered reader/writer positioned at the first DERP frame.
func rawUpgrade(t testing.TB, s *server, nc net.Conn, extraHeaders ...string) (*http.Response, *bufio.ReadWriter) {
	t.Helper()
	nc.SetDeadline(time.Now().Add(opTimeout))
	defer nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(nc, upgradeRequest(s.addr(), extraHeaders...)); err != nil {
		t.Fatal(err)
	}
	brw := bufio.NewReadWriter(bufio.NewReader(nc), bufio.NewWriter(nc))
	resp, err := http.ReadResponse(brw.Reader, nil)
	if err != nil {
		t.Fatalf("reading upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade status = %v, want 101", resp.Status)
	}
	return resp, brw
}

// rawClient is a real derp.Client running over a hand-upgraded connection,
// so tests can also write arbitrary frames to w.
type rawClient struct {
	t    testing.TB
	nc   net.Conn
	brw  *bufio.ReadWriter
	dc   *derp.Client
	priv key.NodePrivate
	pub  key.NodePublic
}

// newRawClient upgrades (without fast start), runs the real handshake via
// derp.NewClient and reads the ServerInfo frame.
func newRawClient(t testing.TB, s *server, priv key.NodePrivate) *rawClient {
	t.Helper()
	if priv.IsZero() {
		priv = key.NewNode()
	}
	nc := rawDial(t, s)
	_, brw := rawUpgrade(t, s, nc)
	nc.SetDeadline(time.Now().Add(opTimeout))
	dc, err := derp.NewClient(priv, nc, brw, testLogf(t, "raw"), derp.CanAckPings(true))
	if err != nil {
		t.Fatalf("derp.NewClient: %v", err)
	}
	nc.SetDeadline(time.Time{})
	rc := &rawClient{t: t, nc: nc, brw: brw, dc: dc, priv: priv, pub: priv.Public()}
	m, err := rc.recv(opTimeout)
	if err != nil {
		t.Fatalf("raw client: waiting for ServerInfo: %v", err)
	}
	if _, ok := m.(derp.ServerInfoMessage); !ok {
		t.Fatalf("raw client: first message %T, want ServerInfoMessage", m)
	}
	return rc
}

// recv reads one message (skipping KeepAlives) with a deadline. derp.Client
// sets its own 120 s read deadline on each Recv, so the bound is enforced by
// closing the connection from a timer.
func (rc *rawClient) recv(timeout time.Duration) (derp.ReceivedMessage, error) {
	type res struct {
		m   derp.ReceivedMessage
		err error
	}
	ch := make(chan res, 1)
	go func() {
		for {
			m, err := rc.dc.Recv()
			if _, ok := m.(derp.KeepAliveMessage); ok && err == nil {
				continue
			}
			if p, ok := m.(derp.ReceivedPacket); ok {
				p.Data = bytes.Clone(p.Data)
				m = p
			}
			ch <- res{m, err}
			return
		}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(timeout):
		rc.nc.Close() // unblocks the goroutine
		return nil, errTimeout
	}
}

// writeFrame writes one raw frame (header + payload) and flushes.
func (rc *rawClient) writeFrame(typ derp.FrameType, payload []byte) error {
	rc.nc.SetWriteDeadline(time.Now().Add(opTimeout))
	defer rc.nc.SetWriteDeadline(time.Time{})
	return derp.WriteFrame(rc.brw.Writer, typ, payload)
}

// expectClosed asserts that the server closes the connection (EOF or reset)
// within opTimeout, with no further frames except possibly KeepAlive.
func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	m, err := rc.recv(opTimeout)
	if err == nil {
		rc.t.Fatalf("expected server to close the connection, got %T %s", m, describe(m))
	}
	if errors.Is(err, errTimeout) {
		rc.t.Fatalf("server did not close the connection within %v", opTimeout)
	}
}

// pingPong sends a Ping over the raw client and expects the Pong.
func (rc *rawClient) pingPong() {
	rc.t.Helper()
	data := [8]byte{'r', 'a', 'w', 'p', 'i', 'n', 'g', '!'}
	if err := rc.dc.SendPing(data); err != nil {
		rc.t.Fatalf("raw SendPing: %v", err)
	}
	m, err := rc.recv(opTimeout)
	if err != nil {
		rc.t.Fatalf("raw: waiting for pong: %v", err)
	}
	if p, ok := m.(derp.PongMessage); !ok || p != derp.PongMessage(data) {
		rc.t.Fatalf("raw: got %T %s, want Pong %q", m, describe(m), data[:])
	}
}

// discoLike returns a payload the server classifies as disco: the 6-byte
// magic "TS💬" followed by n more bytes (n >= 56 makes it >= 62 bytes).
func discoLike(n int) []byte {
	p := append([]byte("TS\xf0\x9f\x92\xac"), make([]byte, n)...)
	for i := 6; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// payload returns n deterministic bytes tagged with tag.
func payload(tag string, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + len(tag))
	}
	copy(p, tag)
	return p
}

// derphttpNewClient is derphttp.NewClient with a test logger.
func derphttpNewClient(t testing.TB, priv key.NodePrivate, url, name string) (*derphttp.Client, error) {
	return derphttp.NewClient(priv, url, testLogf(t, name), netmon.NewStatic())
}

// TestMain prints the skip reason once on stderr (visible without -v) when
// DERPER_BIN is unset, and the detected flavor otherwise.
func TestMain(m *testing.M) {
	if os.Getenv("DERPER_BIN") == "" {
		fmt.Fprintln(os.Stderr, "*** DERPER_BIN not set: interop tests skipped ***")
	} else {
		fmt.Fprintf(os.Stderr, "interop: DERPER_BIN=%s flavor=%s\n", os.Getenv("DERPER_BIN"), flavor())
	}
	os.Exit(m.Run())
}
