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
