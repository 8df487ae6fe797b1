//! systemd: the notify protocol, the watchdog, socket activation, and
//! binding the admission socket ourselves when not activated.

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

/// Whether systemd listens for notify messages (Type=notify).
pub fn notify_socket_set() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The message that starts a reload: `RELOADING=1` with the monotonic
/// time it was sent (`MONOTONIC_USEC=`, sd_notify(3)), which systemd
/// (Type=notify-reload) needs to tell this reload from an earlier one.
pub fn reloading_message() -> String {
    use nix::time::{clock_gettime, ClockId};
    let usec = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
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
        crate::store::ensure_dir(dir, 0o711)?;
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
