package interop

// Tailscale's own STUN client code (tailscale.com/net/stun, pinned in go.mod)
// against our standalone STUN server, the binary named by $STUNNER_BIN:
//
//	STUNNER_BIN=$PWD/../../target/debug/stunner go test -count=1 -run Stunner -v ./...
//
// Unlike TestSTUN (which drives $DERPER_BIN's -stun-port), these tests need
// no DERP server.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/net/stun"
)

// startStunner runs $STUNNER_BIN with args and returns the addresses it
// prints as "listening on ADDR", one per --listen flag (want of them).
func startStunner(t *testing.T, want int, args ...string) []netip.AddrPort {
	t.Helper()
	bin := os.Getenv("STUNNER_BIN")
	if bin == "" {
		msg := "SKIPPING stunner interop: set STUNNER_BIN to the stunner binary (cargo build -p stunner)"
		fmt.Fprintln(os.Stderr, msg)
		t.Skip(msg)
	}
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stunner exited with %v; stderr:\n%s", err, stderr.String())
			}
		case <-time.After(opTimeout):
			cmd.Process.Kill()
			t.Errorf("stunner did not stop on SIGTERM; stderr:\n%s", stderr.String())
		}
	})

	addrs := make(chan netip.AddrPort, want)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				if ap, err := netip.ParseAddrPort(a); err == nil {
					addrs <- ap
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	var out []netip.AddrPort
	deadline := time.After(startTimeout)
	for len(out) < want {
		select {
		case a := <-addrs:
			out = append(out, a)
		case <-deadline:
			t.Fatalf("stunner printed %d of %d listen addresses; stderr:\n%s", len(out), want, stderr.String())
		}
	}
	return out
}

// stunRoundTrip sends req from conn to dst and returns the raw response,
// which must come from dst.
func stunRoundTrip(t *testing.T, conn *net.UDPConn, dst netip.AddrPort, req []byte) []byte {
	t.Helper()
	if _, err := conn.WriteToUDPAddrPort(req, dst); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(opTimeout))
	buf := make([]byte, 1500)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no STUN response from %v: %v", dst, err)
	}
	if from.Port() != dst.Port() || from.Addr().Unmap() != dst.Addr().Unmap() {
		t.Errorf("response from %v, want %v", from, dst)
	}
	return buf[:n]
}

func listenUDP(t *testing.T, network, addr string) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP(network, ua)
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, netip.MustParseAddrPort(conn.LocalAddr().String())
}

// checkTailscale does what magicsock does: stun.Request, stun.ParseResponse,
// and additionally requires the bytes derper's stun.Response would send.
func checkTailscale(t *testing.T, conn *net.UDPConn, local, dst netip.AddrPort) {
	t.Helper()
	txid := stun.NewTxID()
	resp := stunRoundTrip(t, conn, dst, stun.Request(txid))
	gotTx, addr, err := stun.ParseResponse(resp)
	if err != nil {
		t.Fatalf("stun.ParseResponse(%x): %v", resp, err)
	}
	if gotTx != txid {
		t.Errorf("txid %x, want %x", gotTx, txid)
	}
	if addr != local {
		t.Errorf("mapped address %v, want %v", addr, local)
	}
	if want := stun.Response(txid, local); !bytes.Equal(resp, want) {
		t.Errorf("response bytes\n got %x\nwant %x (stun.Response)", resp, want)
	}
}

func TestStunnerTailscaleClient(t *testing.T) {
	addrs := startStunner(t, 2, "--listen", "127.0.0.1:0", "--listen", "[::1]:0")
	t.Run("ipv4", func(t *testing.T) {
		conn, local := listenUDP(t, "udp4", "127.0.0.1:0")
		for range 3 {
			checkTailscale(t, conn, local, addrs[0])
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		conn, local := listenUDP(t, "udp6", "[::1]:0")
		for range 3 {
			checkTailscale(t, conn, local, addrs[1])
		}
	})
}

// TestStunnerDualStack: on a [::] socket IPv4 clients appear as
// ::ffff:a.b.c.d. Go's derper then answers with family 2 (44 bytes); stunner
// answers with family 1, exactly what stun.Response gives for the IPv4 address.
func TestStunnerDualStack(t *testing.T) {
	addrs := startStunner(t, 1, "--listen", "[::]:0")
	port := addrs[0].Port()
	t.Run("ipv4", func(t *testing.T) {
		conn, local := listenUDP(t, "udp4", "127.0.0.1:0")
		checkTailscale(t, conn, local, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	})
	t.Run("ipv6", func(t *testing.T) {
		conn, local := listenUDP(t, "udp6", "[::1]:0")
		checkTailscale(t, conn, local, netip.AddrPortFrom(netip.IPv6Loopback(), port))
	})
}

// TestStunnerGenericRequest: a header-only RFC 5389 binding request, which
// derper ignores, is answered, and Tailscale's parser reads the answer.
func TestStunnerGenericRequest(t *testing.T) {
	addrs := startStunner(t, 1, "--listen", "127.0.0.1:0")
	conn, local := listenUDP(t, "udp4", "127.0.0.1:0")
	var txid stun.TxID
	copy(txid[:], "generic-txid")
	req := append([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, txid[:]...)
	resp := stunRoundTrip(t, conn, addrs[0], req)
	gotTx, addr, err := stun.ParseResponse(resp)
	if err != nil {
		t.Fatalf("stun.ParseResponse(%x): %v", resp, err)
	}
	if gotTx != txid || addr != local {
		t.Errorf("got %x %v, want %x %v", gotTx, addr, txid, local)
	}
	if len(resp) > 3*len(req) {
		t.Errorf("response of %d bytes to a %d-byte request: more than 3x", len(resp), len(req))
	}
}
