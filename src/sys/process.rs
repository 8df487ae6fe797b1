//! Processes as /proc shows them (this daemon's pid namespace): start time
//! (identity across pid reuse), parent, the pid in each nested namespace,
//! and which process a hook's VPN server is (`locate`, pure over a lookup).

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

/// What identifies a process and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// In this daemon's pid namespace.
    pub pid: u32,
    pub ppid: u32,
    pub start_ticks: u64,
    /// Its pid in each pid namespace it is visible in, outermost (ours)
    /// first: the last is the pid the process sees for itself.
    pub nspid: Vec<u32>,
    /// The command name (`comm`), as the kernel keeps it.
    pub comm: String,
}

impl Proc {
    /// The pid the process sees for itself (what it puts in a hook's environment).
    pub fn own_pid(&self) -> u32 {
        self.nspid.last().copied().unwrap_or(self.pid)
    }
}

/// Reads a live process (None when gone or a zombie).
pub fn read(pid: u32) -> Option<Proc> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start_ticks = parse_stat(&stat)?;
    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let nspid = parse_nspid(&status).unwrap_or_else(|| vec![pid]);
    Some(Proc {
        pid,
        ppid,
        start_ticks,
        nspid,
        comm,
    })
}

/// The `NSpid:` line of /proc/PID/status (kernels since 4.1).
fn parse_nspid(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Option<Vec<u32>> = line.split_whitespace().map(|p| p.parse().ok()).collect();
    pids.filter(|p| !p.is_empty())
}

/// The children of a process (from each thread's `children` list, or by
/// scanning /proc where the kernel has no such list).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    if !listed {
        if let Ok(all) = std::fs::read_dir("/proc") {
            out.extend(
                all.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|c| parent_pid(*c) == Some(pid)),
            );
        }
    }
    out
}

/// Where the VPN server a hook names is, relative to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The hook itself or one of its ancestors (OpenVPN runs its hooks as
    /// children; an in-process plugin is the server itself).
    SelfOrAncestor,
    /// The same, or a child of the hook's ancestors (an ocserv worker: the
    /// main process runs the scripts, the worker it forked serves the session).
    ChildOfAncestor,
}

/// How far up a hook's ancestry the server may be (hook, a shell, the server).
const MAX_DEPTH: usize = 8;

/// Finds the process a hook (`peer`, a pid in our namespace as the kernel
/// gave it) calls `claimed` (a pid as the server sees itself, from the
/// hook's environment): walking up from the hook, the nearest process whose
/// own pid is `claimed`, in the hook's pid namespace, and whose command
/// name passes `named`. Never our own namespace's init (pid 1 here is
/// nobody's VPN server). None when
/// there is no such process: the claim is refused, never guessed.
pub fn locate(
    peer: u32,
    claimed: u32,
    relation: Relation,
    named: impl Fn(&str) -> bool,
    read: impl Fn(u32) -> Option<Proc>,
    children: impl Fn(u32) -> Vec<u32>,
) -> Option<Proc> {
    let hook = read(peer)?;
    // The hook names pids as its own pid namespace shows them: only a
    // process in that namespace can be meant (an ancestor further out is
    // invisible to it, and its number there means another process).
    let depth = hook.nspid.len();
    let fits =
        |p: &Proc| p.pid != 1 && p.nspid.len() == depth && p.own_pid() == claimed && named(&p.comm);
    let mut at = hook;
    for _ in 0..MAX_DEPTH {
        if fits(&at) {
            return Some(at);
        }
        if relation == Relation::ChildOfAncestor {
            // Only a child in the same pid namespace as its parent.
            let found = children(at.pid)
                .into_iter()
                .filter_map(&read)
                .find(|c| c.ppid == at.pid && c.nspid.len() == at.nspid.len() && fits(c));
            if found.is_some() {
                return found;
            }
        }
        if at.ppid <= 1 {
            return None;
        }
        at = read(at.ppid)?;
    }
    None
}

/// CPU time the calling thread has used (zero where the clock is missing).
pub fn thread_cpu_time() -> std::time::Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(std::time::Duration::ZERO, std::time::Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn table() -> std::collections::HashMap<u32, Proc> {
        let p = |pid, ppid, nspid: &[u32], comm: &str| {
            (
                pid,
                Proc {
                    pid,
                    ppid,
                    start_ticks: u64::from(pid) * 10,
                    nspid: nspid.to_vec(),
                    comm: comm.into(),
                },
            )
        };
        // Host: systemd(1) - sshd(45) - containerd(300) - a container
        // whose init is 900/1, OpenVPN 901/45 with its hook 950/60, and
        // ocserv main 902/7 with worker 903/49 and a connect-script 960/61.
        [
            p(1, 0, &[1], "systemd"),
            p(45, 1, &[45], "sshd"),
            p(300, 45, &[300], "containerd"),
            p(900, 300, &[900, 1], "tini"),
            p(901, 900, &[901, 45], "openvpn"),
            p(950, 901, &[950, 60], "seatgate"),
            p(902, 900, &[902, 7], "ocserv-main"),
            p(903, 902, &[903, 49], "ocserv-worker"),
            p(904, 902, &[904, 50, 1], "ocserv-nested"),
            p(960, 902, &[960, 61], "seatgate"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn locate_follows_the_kernel_not_the_claim() {
        let t = table();
        let read = |pid| t.get(&pid).cloned();
        let children = |pid| {
            let mut c: Vec<u32> = t
                .values()
                .filter(|p| p.ppid == pid)
                .map(|p| p.pid)
                .collect();
            c.sort_unstable();
            c
        };
        let any = |_: &str| true;
        let ovpn = |c: &str| c.starts_with("openvpn");
        let oc = |c: &str| c.starts_with("ocserv");
        use Relation::*;
        let found = |peer, claimed, rel, named: &dyn Fn(&str) -> bool| {
            locate(peer, claimed, rel, named, read, children).map(|p| p.pid)
        };
        // OpenVPN in a container says daemon_pid=45: its own ancestor, not host sshd.
        assert_eq!(found(950, 45, SelfOrAncestor, &ovpn), Some(901));
        // A claim of a pid that is no ancestor is refused, and so is an
        // ancestor outside the hook's pid namespace (invisible to the hook).
        assert_eq!(found(950, 902, SelfOrAncestor, &any), None);
        assert_eq!(found(950, 300, SelfOrAncestor, &any), None);
        // pid 1 of our namespace is nobody's server; the container's init may be.
        assert_eq!(
            found(950, 1, SelfOrAncestor, &|c: &str| c == "systemd"),
            None
        );
        assert_eq!(found(950, 1, SelfOrAncestor, &any), Some(900));
        // The command name must fit the kind.
        assert_eq!(found(950, 45, SelfOrAncestor, &oc), None);
        // ocserv's worker ID=49 is a child of the script's parent, in its namespace.
        assert_eq!(found(960, 49, ChildOfAncestor, &oc), Some(903));
        // A child in a nested namespace does not count, nor an unknown id.
        assert_eq!(found(960, 1, ChildOfAncestor, &oc), None);
        assert_eq!(found(960, 51, ChildOfAncestor, &oc), None);
        // Unknown peer.
        assert_eq!(found(4242, 45, SelfOrAncestor, &any), None);
    }

    #[test]
    fn nspid_lines() {
        assert_eq!(
            parse_nspid("Name:\tx\nNSpid:\t901\t45\n"),
            Some(vec![901, 45])
        );
        assert_eq!(parse_nspid("Name:\tx\n"), None);
        assert_eq!(parse_nspid("NSpid:\tx\n"), None);
        let me = read(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.start_ticks, process_start_ticks(me.pid).unwrap());
        assert!(children(me.ppid).contains(&me.pid));
    }
}
