//! Who is asking: the services of an NI know a request's app by the app port it came
//! through, not by the address it claims. The app port's program stamps every packet
//! from the app with its connection mark, whose top byte is the app number (EVE's
//! layout); marks never cross namespaces (veth scrubs them), so an app cannot forge one.
//! A TCP server reads the mark its connection's SYN carried (the NI netns sets
//! `tcp_fwmark_accept`), a UDP server the mark of each datagram (`SO_RCVMARK`, 5.19+).
//! The claimed address must agree with that app as well.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, RawFd},
};

use nix::libc;

/// The app number in a connection mark; 0: no app stamped it.
pub fn app_num(mark: u32) -> u32 {
    netns_ebpf_common::mark::decode(mark).app_num
}

/// The mark an accepted TCP connection took from its SYN.
pub fn tcp_mark(stream: &impl AsFd) -> u32 {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::Mark).unwrap_or(0)
}

/// `SO_RCVMARK` (Linux 5.19): each datagram comes with its skb mark.
const SO_RCVMARK: libc::c_int = 75;

/// Asks the kernel to hand over each datagram's mark (see `recv_marked`).
pub fn enable_rcvmark(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_RCVMARK,
            &on as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram from a (non-blocking) IPv4 UDP socket with its sender and its mark
/// (0 when the socket does not receive marks or the datagram had none).
pub fn recv_marked(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, u32)> {
    // SAFETY: every pointer handed to recvmsg points into live locals of the right size,
    // and the control messages are walked with the libc macros within `control`.
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut mark = 0u32;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_MARK {
                mark = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let addr = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)), u16::from_be(from.sin_port));
        Ok((n as usize, addr, mark))
    }
}

/// A random 16-bit number (the kernel's CSPRNG): upstream DNS transaction ids.
pub fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: writes at most 2 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 2, 0) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        // getrandom cannot fail for 2 bytes once the pool is up; never predictable anyway.
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) ^ std::process::id())
            as u16
    }
}
