package interop

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"tailscale.com/net/stun"
)

// TestSTUN: a Tailscale STUN request (tailscale.com/net/stun) sent to
// -stun-port is answered with the sender's address; with -a 127.0.0.1:PORT
// the socket is IPv4-only and the answer is the 32-byte IPv4 form. A generic
// STUN binding request without SOFTWARE "tailnode" gets no answer.
func TestSTUN(t *testing.T) {
	s := startServer(t, serverOpts{mode: modePlain})
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.stunPort}
	local := netip.MustParseAddrPort(conn.LocalAddr().String())

	txid := stun.NewTxID()
	req := stun.Request(txid)
	if len(req) != 40 {
		t.Fatalf("stun.Request is %d bytes, expected 40", len(req))
	}
	// The STUN server may bind slightly after the HTTP listener: retry.
	buf := make([]byte, 1500)
	var resp []byte
	for i := 0; i < 20 && resp == nil; i++ {
		if _, err := conn.WriteToUDP(req, dst); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, _, err := conn.ReadFromUDP(buf)
		if err == nil {
			resp = buf[:n]
		}
	}
	if resp == nil {
		t.Fatalf("no STUN response from 127.0.0.1:%d", s.stunPort)
	}
	gotTx, addr, err := stun.ParseResponse(resp)
	if err != nil {
		t.Fatalf("ParseResponse(%x): %v", resp, err)
	}
	if gotTx != txid {
		t.Errorf("txid mismatch")
	}
	if addr != local {
		t.Errorf("mapped address = %v, want %v", addr, local)
	}
	// Exact bytes: 01 01 | 00 0c | cookie | txid | 00 20 00 08 00 01 port^0x2112 ip^cookie
	want := []byte{0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42}
	want = append(want, txid[:]...)
	want = append(want, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01)
	want = binary.BigEndian.AppendUint16(want, local.Port()^0x2112)
	ip := local.Addr().As4()
	want = append(want, ip[0]^0x21, ip[1]^0x12, ip[2]^0xa4, ip[3]^0x42)
	if !bytes.Equal(resp, want) {
		t.Errorf("STUN response\n got %x\nwant %x", resp, want)
	}

	// Generic binding request: header only, no attributes.
	generic := []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}
	generic = append(generic, []byte("generic-txid")...)
	if _, err := conn.WriteToUDP(generic, dst); err != nil {
		t.Fatal(err)
	}
	if flavor() == "ours" {
		// Ours answers standard RFC 8489 clients too; Tailscale's parser must accept the answer.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("generic STUN request not answered: %v", err)
		}
		gotTx, gotAddr, err := stun.ParseResponse(buf[:n])
		if err != nil {
			t.Fatalf("parsing generic response %x: %v", buf[:n], err)
		}
		if string(gotTx[:]) != "generic-txid" || gotAddr != local {
			t.Errorf("generic response: txid %q addr %v, want %q %v", gotTx[:], gotAddr, "generic-txid", local)
		}
		return
	}
	conn.SetReadDeadline(time.Now().Add(quietWindow))
	if n, _, err := conn.ReadFromUDP(buf); err == nil {
		t.Errorf("generic STUN request answered (%x); Tailscale's derper ignores it", buf[:n])
	}
}
