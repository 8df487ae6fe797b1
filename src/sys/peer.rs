//! What the kernel says about a socket peer: its supplementary groups.

/// `SO_PEERGROUPS` (Linux 4.13+; the asm-generic value, which x86 and ARM use).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
))]
const SO_PEERGROUPS: nix::libc::c_int = 59;

/// Supplementary groups of a Unix-socket peer as the kernel recorded them
/// when it connected. Unlike /proc/PID/status read later, a pid reused since
/// cannot lend its groups. None where the kernel does not know the option.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
))]
pub fn peer_groups(sock: &impl std::os::fd::AsRawFd) -> Option<Vec<u32>> {
    use nix::libc;
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of gid_t that the kernel fills in.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Some(groups);
        }
        let too_small = std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE);
        if !too_small || count <= groups.len() || count > 65_536 {
            return None;
        }
        groups.resize(count, 0);
    }
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
)))]
pub fn peer_groups(_sock: &impl std::os::fd::AsRawFd) -> Option<Vec<u32>> {
    None
}

/// Supplementary groups of a process, from /proc/PID/status (empty if gone).
pub fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_groups_are_the_connecting_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = peer_groups(&a).expect("SO_PEERGROUPS on this kernel");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
