//! A batching STUN load client: measures Binding responses per second from any server.
//!
//! Each of `--sockets` threads owns a connected UDP socket. Closed loop (default): it keeps
//! `--window` Tailscale binding requests in flight, topping the window up with one `sendmmsg` and
//! collecting responses with one `recvmmsg(MSG_WAITFORONE)`; lost datagrams shrink the window
//! until a receive times out, which refills it. This measures round trips, so on a VM it mostly
//! measures wake-up latency. Open loop (`--open`): it sends batches of 64 as fast as it can and
//! drains responses between batches, so the server is saturated and the response rate is its
//! capacity. Either way a response counts only if it parses as a Binding Success Response whose
//! transaction ID this thread sent.
//!
//! ```text
//! cargo run --release -p stunner --example stun-load -- --target 127.0.0.1:3478 --duration 5
//! ```
//!
//! Prints a human line and a machine line `RESULT rps=<responses per second> ...`.
//! Linux only (`sendmmsg`/`recvmmsg`).

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("stun-load needs Linux (sendmmsg/recvmmsg)");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    use std::{io, mem, ptr, thread};

    use derp_proto::stun::{self, TxId};

    /// Datagrams per system call, and the largest window.
    const BATCH: usize = 64;
    /// A receive that waits this long means the window's datagrams were lost; refill it.
    const RECV_TIMEOUT: Duration = Duration::from_millis(20);

    struct Args {
        target: SocketAddr,
        duration: Duration,
        warmup: Duration,
        sockets: usize,
        window: usize,
        open: bool,
    }

    fn parse_args() -> Args {
        let mut args = Args {
            target: SocketAddr::from(([127, 0, 0, 1], 3478)),
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            sockets: 2,
            window: 32,
            open: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--open" {
                args.open = true;
                continue;
            }
            let value = it
                .next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
            let bad = || -> ! { usage(&format!("bad value for {flag}: {value}")) };
            match flag.as_str() {
                "--target" => args.target = value.parse().unwrap_or_else(|_| bad()),
                "--duration" => {
                    args.duration = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| bad()))
                }
                "--warmup" => {
                    args.warmup = Duration::from_secs_f64(value.parse().unwrap_or_else(|_| bad()))
                }
                "--sockets" => args.sockets = value.parse().unwrap_or_else(|_| bad()),
                "--window" => args.window = value.parse().unwrap_or_else(|_| bad()),
                _ => usage(&format!("unknown flag {flag}")),
            }
        }
        args.sockets = args.sockets.max(1);
        args.window = args.window.clamp(1, BATCH);
        args
    }

    fn usage(msg: &str) -> ! {
        eprintln!(
            "stun-load: {msg}\nusage: stun-load --target ADDR [--duration SECS] [--warmup SECS] \
             [--sockets N] [--window 1..=64] [--open]"
        );
        std::process::exit(2);
    }

    #[derive(Default)]
    struct Counters {
        sent: AtomicU64,
        ok: AtomicU64,
        bad: AtomicU64,
        timeouts: AtomicU64,
    }

    pub(super) fn main() {
        let args = parse_args();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for id in 0..args.sockets {
            let (stop, counters) = (stop.clone(), counters.clone());
            let (target, window, open) = (args.target, args.window, args.open);
            threads.push(thread::spawn(move || {
                let r = if open {
                    run_open(id as u32, target, &stop, &counters)
                } else {
                    run(id as u32, target, window, &stop, &counters)
                };
                if let Err(e) = r {
                    eprintln!("stun-load: socket {id}: {e}");
                }
            }));
        }
        // Sleeping here is the point: the measurement window is wall-clock time.
        #[allow(clippy::disallowed_methods)]
        thread::sleep(args.warmup);
        let (ok0, sent0, start) = (
            counters.ok.load(Ordering::Relaxed),
            counters.sent.load(Ordering::Relaxed),
            Instant::now(),
        );
        #[allow(clippy::disallowed_methods)]
        thread::sleep(args.duration);
        let elapsed = start.elapsed().as_secs_f64();
        let ok = counters.ok.load(Ordering::Relaxed) - ok0;
        let sent = counters.sent.load(Ordering::Relaxed) - sent0;
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let rps = ok as f64 / elapsed;
        let mode = if args.open {
            "open loop".to_string()
        } else {
            format!("window {}", args.window)
        };
        println!(
            "{}: {:.0} responses/s ({} sockets, {mode}; sent {}, answered {}, bad {}, timeouts {})",
            args.target,
            rps,
            args.sockets,
            sent,
            ok,
            counters.bad.load(Ordering::Relaxed),
            counters.timeouts.load(Ordering::Relaxed),
        );
        println!(
            "RESULT rps={rps:.0} sent={sent} ok={ok} timeouts={}",
            counters.timeouts.load(Ordering::Relaxed)
        );
    }

    fn run(
        id: u32,
        target: SocketAddr,
        window: usize,
        stop: &AtomicBool,
        counters: &Counters,
    ) -> io::Result<()> {
        let bind: SocketAddr = if target.is_ipv4() {
            "127.0.0.1:0".parse().expect("literal")
        } else {
            "[::1]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(target)?;
        sock.set_read_timeout(Some(RECV_TIMEOUT))?;
        let fd = sock.as_raw_fd();

        // Transaction IDs: 4 bytes of socket id, 8 of sequence number.
        let mut seq: u64 = 0;
        let mut requests = vec![[0u8; stun::TAILSCALE_REQUEST_LEN]; BATCH];
        let mut responses = vec![[0u8; 128]; BATCH];
        let mut lens = [0usize; BATCH];
        let mut in_flight = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let n = window - in_flight;
            for req in requests.iter_mut().take(n) {
                let mut tx = [0u8; 12];
                tx[..4].copy_from_slice(&id.to_be_bytes());
                tx[4..].copy_from_slice(&seq.to_be_bytes());
                seq += 1;
                *req = stun::binding_request(TxId(tx));
            }
            let sent = send_batch(fd, &requests[..n])?;
            in_flight += sent;
            counters.sent.fetch_add(sent as u64, Ordering::Relaxed);

            match recv_batch(fd, &mut responses, &mut lens, libc::MSG_WAITFORONE) {
                Ok(got) => {
                    let mut ok = 0;
                    for (resp, &len) in responses.iter().zip(&lens[..got]) {
                        match stun::parse_binding_response(&resp[..len]) {
                            Ok((tx, _)) if tx.0[..4] == id.to_be_bytes() => ok += 1,
                            _ => {
                                counters.bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    in_flight = in_flight.saturating_sub(got);
                    counters.ok.fetch_add(ok, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    in_flight = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => in_flight = 0,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Open loop: send 64 at a time as fast as possible, drain responses in between.
    fn run_open(
        id: u32,
        target: SocketAddr,
        stop: &AtomicBool,
        counters: &Counters,
    ) -> io::Result<()> {
        let sock = UdpSocket::bind(if target.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        })?;
        sock.connect(target)?;
        // A large receive buffer so responses are not lost while we are busy sending.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        let fd = sock.as_raw_fd();
        let mut seq: u64 = 0;
        let mut requests = vec![[0u8; stun::TAILSCALE_REQUEST_LEN]; BATCH];
        let mut responses = vec![[0u8; 128]; BATCH];
        let mut lens = [0usize; BATCH];
        while !stop.load(Ordering::Relaxed) {
            for req in &mut requests {
                let mut tx = [0u8; 12];
                tx[..4].copy_from_slice(&id.to_be_bytes());
                tx[4..].copy_from_slice(&seq.to_be_bytes());
                seq += 1;
                *req = stun::binding_request(TxId(tx));
            }
            let sent = send_batch(fd, &requests)?;
            counters.sent.fetch_add(sent as u64, Ordering::Relaxed);
            loop {
                match recv_batch(fd, &mut responses, &mut lens, libc::MSG_DONTWAIT) {
                    Ok(got) => {
                        let ok = responses
                            .iter()
                            .zip(&lens[..got])
                            .filter(|(resp, len)| {
                                matches!(stun::parse_binding_response(&resp[..**len]),
                                    Ok((tx, _)) if tx.0[..4] == id.to_be_bytes())
                            })
                            .count();
                        counters.ok.fetch_add(ok as u64, Ordering::Relaxed);
                        counters.bad.fetch_add((got - ok) as u64, Ordering::Relaxed);
                        if got < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// One `sendmmsg` on a connected socket; returns how many were sent.
    fn send_batch(fd: i32, msgs: &[[u8; stun::TAILSCALE_REQUEST_LEN]]) -> io::Result<usize> {
        if msgs.is_empty() {
            return Ok(0);
        }
        // SAFETY: plain old data; zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for ((iov, hdr), msg) in iovs.iter_mut().zip(hdrs.iter_mut()).zip(msgs) {
            iov.iov_base = msg.as_ptr().cast_mut().cast();
            iov.iov_len = msg.len();
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first msgs.len() headers point at live buffers; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A full send buffer or a refused port is load, not a failure.
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// One `recvmmsg`: with `MSG_WAITFORONE` it blocks (up to the socket timeout) for the first
    /// datagram, then takes whatever else is queued; with `MSG_DONTWAIT` it never blocks.
    /// Returns how many arrived; their lengths go to `lens`.
    fn recv_batch(
        fd: i32,
        bufs: &mut [[u8; 128]],
        lens: &mut [usize; BATCH],
        flags: libc::c_int,
    ) -> io::Result<usize> {
        // SAFETY: plain old data; zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let n = bufs.len().min(BATCH);
        for ((iov, hdr), buf) in iovs.iter_mut().zip(hdrs.iter_mut()).zip(bufs.iter_mut()) {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first n headers point at live, exclusively borrowed buffers.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                flags,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = (r as usize).min(n);
        for (len, hdr) in lens.iter_mut().zip(&hdrs[..got]) {
            *len = hdr.msg_len as usize;
        }
        Ok(got)
    }
}
