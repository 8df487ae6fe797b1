//! The operating system edge: users and groups, peer credentials of socket
//! clients, process liveness, and the systemd notify protocol.

use nix::unistd::{Group, User};

use crate::config::{Config, Problem};

/// Checks what only the host can tell about a config: the bundle file is
/// there, the named users and groups exist.
pub fn check_config_on_host(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(path) = &config.bundle_file {
        if !path.is_file() {
            problems.push(Problem {
                key: "license.bundle_file".into(),
                message: format!(
                    "{} does not exist; point it at a signed bundle or remove the key",
                    path.display()
                ),
            });
        }
    }
    if let Some(cloud) = &config.cloud {
        problems.extend(check_cloud_files(cloud));
    }
    let a = &config.admission;
    for (i, name) in a.vpn_users.iter().enumerate() {
        if uid_of(name).is_none() {
            problems.push(Problem {
                key: format!("admission.vpn_users[{i}]"),
                message: format!("no user {name:?} on this host; name the user your VPN server runs its scripts as"),
            });
        }
    }
    let groups = [
        ("admission.vpn_groups", &a.vpn_groups),
        ("admission.operator_groups", &a.operator_groups),
    ];
    for (key, list) in groups {
        for (i, name) in list.iter().enumerate() {
            if gid_of(name).is_none() {
                problems.push(Problem {
                    key: format!("{key}[{i}]"),
                    message: format!("no group {name:?} on this host; create it or remove it"),
                });
            }
        }
    }
    if let Some(name) = &a.socket_group {
        if gid_of(name).is_none() {
            problems.push(Problem {
                key: "admission.socket_group".into(),
                message: format!("no group {name:?} on this host; create it or remove the key"),
            });
        }
    }
    for (i, r) in config.reconcile.iter().enumerate() {
        if let crate::config::Source::Ocserv { occtl, .. } = &r.source {
            if !occtl.is_file() {
                problems.push(Problem {
                    key: format!("reconcile[{i}].occtl"),
                    message: format!(
                        "{} does not exist; install ocserv (it ships occtl) or point occtl at it",
                        occtl.display()
                    ),
                });
            }
        }
    }
    problems
}

/// The cloud's files exist, and the client key is not readable by everyone.
fn check_cloud_files(cloud: &crate::config::Cloud) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    let files = [
        (
            "cloud.ca_file",
            &cloud.ca_file,
            "the cloud's CA certificate (PEM)",
        ),
        (
            "cloud.client_cert",
            &cloud.client_cert,
            "this gateway's client certificate (PEM)",
        ),
        (
            "cloud.client_key",
            &cloud.client_key,
            "the client certificate's private key (PEM)",
        ),
    ];
    for (key, path, what) in files {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                if key == "cloud.client_key" && m.permissions().mode() & 0o004 != 0 {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!(
                            "{} is readable by every user; chmod 600 it (owned by the daemon's user)",
                            path.display()
                        ),
                    });
                }
            }
            _ => problems.push(Problem {
                key: key.into(),
                message: format!(
                    "{} does not exist or is not a file; install {what} there",
                    path.display()
                ),
            }),
        }
    }
    problems
}

pub fn uid_of(name: &str) -> Option<u32> {
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

pub fn gid_of(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

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

/// A process's start time in clock ticks since boot: with the pid, it names
/// one process even after the pid is reused. None when there is no such
/// process (or it is a zombie: its sessions are over).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// A process's parent pid (field 4 of /proc/PID/stat); None when gone.
pub fn parent_pid(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Field 3 (state) and field 22 (starttime) of /proc/PID/stat; the command
/// name in field 2 may hold spaces and parentheses, so fields are counted
/// after its last ')'.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Sends a state line to systemd's notify socket, if there is one
/// (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`).
pub fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound()
        .and_then(|s| addr.and_then(|a| s.send_to_addr(state.as_bytes(), &a)));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// How often to ping the systemd watchdog (half its timeout), if it is on
/// for this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

/// The listening socket systemd handed over (socket activation), if any.
/// Takes fd 3 only when LISTEN_PID names this process, then clears the
/// variables so children do not inherit them.
pub fn activated_listener() -> Option<std::os::unix::net::UnixListener> {
    use std::os::fd::FromRawFd;
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called once at start-up before any thread is spawned.
        unsafe { std::env::remove_var(var) };
    }
    // SAFETY: systemd passes the first socket as fd 3 and nothing else owns it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

/// Binds the admission socket with its mode and group set between bind and
/// listen, so no peer can connect through looser permissions. A stale socket
/// file nobody answers on is replaced; a live one is an error.
pub fn bind_socket(
    path: &std::path::Path,
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::AddrInUse,
                format!(
                    "{} is served by another running seatgate; stop it first",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        crate::store::ensure_dir(dir, 0o755)?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))?;
    }
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::os::unix::net::UnixListener::from(fd))
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

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_stat(stat), Some(987654));
        let zombie =
            "1234 (x) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parent_pid(std::process::id()),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
        assert_eq!(parent_pid(0), None);
    }

    #[test]
    fn own_process_has_a_start_time_and_pid_zero_does_not() {
        assert!(process_start_ticks(std::process::id()).is_some());
        assert_eq!(process_start_ticks(0), None);
        assert_eq!(process_start_ticks(u32::MAX), None);
    }
}
