//! The few system calls the control socket needs that std does not offer on
//! stable Rust: the peer's credentials (`SO_PEERCRED`), the effective uid,
//! and waiting on two descriptors at once (`poll`).
//!
//! Each `unsafe` block is confined to one small function with
//! `#[allow(unsafe_code)]` and a `// SAFETY:` comment; everything else in
//! `ctl` is safe code. The functions are thread-safe (they only touch the
//! descriptors they are given).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Credentials of the process at the other end of a unix stream socket, as
/// recorded by the kernel when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id of the peer.
    pub pid: i32,
    /// Effective user id of the peer.
    pub uid: u32,
    /// Effective group id of the peer.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` of `stream`.
#[allow(unsafe_code)]
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is owned by `stream` and open for the duration
    // of the call; `cred` is a valid, writable `ucred` and `len` holds its
    // exact size, so the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Returns freed heap memory to the kernel (glibc `malloc_trim`), so the
/// daemon's RSS reflects what it holds after a large request (a 35 MB
/// `service-update` parses into far more transient memory than it
/// leaves behind).
#[allow(unsafe_code)]
pub fn release_free_heap() {
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their
    // locks; it takes no pointers from us and is safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The effective user id of this process.
#[allow(unsafe_code)]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

/// Blocks until `first` or `second` is readable (or hung up). Returns which
/// are ready, as `(first, second)`. Retries on `EINTR`.
#[allow(unsafe_code)]
pub fn wait_readable(first: &impl AsRawFd, second: &impl AsRawFd) -> io::Result<(bool, bool)> {
    let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: first.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: second.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two initialised pollfd structs
        // that lives across the call, and its length is passed exactly; both
        // descriptors are borrowed from live owners.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok((fds[0].revents & ready != 0, fds[1].revents & ready != 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(&a).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, effective_uid());
    }

    #[test]
    fn wait_readable_reports_the_ready_side() {
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        a_peer.write_all(b"x").unwrap();
        assert_eq!(wait_readable(&a, &b).unwrap(), (true, false));
        drop(a_peer);
        assert_eq!(wait_readable(&b, &a).unwrap(), (false, true));
    }
}
