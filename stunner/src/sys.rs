//! `recvmmsg`/`sendmmsg` batches over a socket's raw fd (Linux only).
//!
//! The `mmsghdr`/`iovec` arrays hold raw pointers into the batch, so they are rebuilt on the stack
//! for every call instead of being stored: the batches themselves stay plain data (and `Send`),
//! and no pointer outlives the borrow it was taken from. Rebuilding costs a few stores per
//! datagram, nothing next to the system call.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;

use crate::defaults::MAX_BATCH;

/// Receive side: `n` slots of `slot` bytes, each with its sender's address.
pub(crate) struct RecvBatch {
    bufs: Box<[u8]>,
    slot: usize,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
}

impl RecvBatch {
    /// `n` is clamped to `1..=MAX_BATCH`.
    pub(crate) fn new(n: usize, slot: usize) -> Self {
        let n = n.clamp(1, MAX_BATCH);
        Self {
            bufs: vec![0u8; n * slot].into_boxed_slice(),
            slot,
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { mem::zeroed() }; n],
            addr_lens: vec![0; n],
            lens: vec![0; n],
            truncated: vec![false; n],
        }
    }

    /// One non-blocking `recvmmsg`; returns how many slots were filled.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.addrs.len();
        // SAFETY (both): iovec and mmsghdr are plain old data; zero is a valid value.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        for (((iov, hdr), buf), addr) in iovs
            .iter_mut()
            .zip(hdrs.iter_mut())
            .zip(self.bufs.chunks_exact_mut(self.slot))
            .zip(self.addrs.iter_mut())
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            hdr.msg_hdr.msg_name = ptr::from_mut(addr).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at live, exclusively borrowed buffers and address
        // slots of the sizes given; the kernel writes at most that much into each.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = (r as usize).min(n);
        for (i, hdr) in hdrs.iter().take(got).enumerate() {
            self.lens[i] = (hdr.msg_len as usize).min(self.slot);
            self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(got)
    }

    /// Datagram `i` of the last `recv`: its bytes, sender, and whether the kernel cut it short.
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let start = i * self.slot;
        let data = &self.bufs[start..start + self.lens[i]];
        (
            data,
            socket_addr(&self.addrs[i], self.addr_lens[i]),
            self.truncated[i],
        )
    }

    /// The raw sender address of datagram `i`, to answer without converting it back.
    pub(crate) fn raw_addr(&self, i: usize) -> (libc::sockaddr_storage, libc::socklen_t) {
        (self.addrs[i], self.addr_lens[i])
    }
}

/// Send side: up to `MAX_BATCH` responses, each with its destination.
pub(crate) struct SendBatch {
    msgs: Vec<Vec<u8>>,
    dsts: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    len: usize,
}

impl SendBatch {
    pub(crate) fn new(n: usize, msg_capacity: usize) -> Self {
        let n = n.clamp(1, MAX_BATCH);
        Self {
            msgs: (0..n).map(|_| Vec::with_capacity(msg_capacity)).collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            dsts: vec![(unsafe { mem::zeroed() }, 0); n],
            len: 0,
        }
    }

    /// The buffer for the next response, cleared. Keep it with [`Self::commit`].
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        let buf = self.msgs.get_mut(self.len)?;
        buf.clear();
        Some(buf)
    }

    /// Keeps the response written into [`Self::next_buf`] for `dst`.
    pub(crate) fn commit(&mut self, dst: (libc::sockaddr_storage, libc::socklen_t)) {
        if self.len < self.msgs.len() {
            self.dsts[self.len] = dst;
            self.len += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// One non-blocking `sendmmsg` of responses `from..len`; returns how many were sent.
    pub(crate) fn send(&self, fd: RawFd, from: usize) -> io::Result<usize> {
        let pending = self.len.saturating_sub(from);
        if pending == 0 {
            return Ok(0);
        }
        // SAFETY (both): iovec and mmsghdr are plain old data; zero is a valid value.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
        for (((iov, hdr), msg), (addr, addr_len)) in iovs
            .iter_mut()
            .zip(hdrs.iter_mut())
            .zip(&self.msgs[from..self.len])
            .zip(&self.dsts[from..self.len])
        {
            // The kernel only reads through these pointers for a send.
            iov.iov_base = msg.as_ptr().cast_mut().cast();
            iov.iov_len = msg.len();
            hdr.msg_hdr.msg_name = ptr::from_ref(addr).cast_mut().cast();
            hdr.msg_hdr.msg_namelen = *addr_len;
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `pending` headers point at live buffers and addresses of the given
        // lengths; sendmmsg does not write through msg_name or iov_base.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                pending as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((r as usize).min(pending))
    }
}

/// Converts a kernel socket address to a `SocketAddr`; `None` for other families.
pub(crate) fn socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is sized and aligned for every socket address type, and
            // the family says this one holds a sockaddr_in.
            let sin = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
