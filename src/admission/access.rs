//! Who may ask what: rights of a socket peer from its credentials
//! (SO_PEERCRED) and the configured users and groups. Pure.

/// A peer's identity as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups, only when a group rule needs them: as the kernel
    /// recorded them at connect (SO_PEERGROUPS), from /proc/PID/status only
    /// on kernels without it (before 4.13).
    pub groups: Vec<u32>,
}

/// The configured rules with names resolved to ids.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The daemon's own uid: always trusted, like root.
    pub own_uid: u32,
    pub vpn_uids: Vec<u32>,
    pub vpn_gids: Vec<u32>,
    pub operator_gids: Vec<u32>,
    pub status_public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// admit and release (VPN server hooks).
    pub seats: bool,
    /// status.
    pub read: bool,
    /// evict (operators).
    pub operate: bool,
}

impl Policy {
    /// True when deciding needs the peer's supplementary groups.
    pub fn needs_groups(&self) -> bool {
        !self.vpn_gids.is_empty() || !self.operator_gids.is_empty()
    }

    pub fn rights(&self, peer: &Peer) -> Rights {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Rights {
                seats: true,
                read: true,
                operate: true,
            };
        }
        let in_any =
            |gids: &[u32]| gids.contains(&peer.gid) || peer.groups.iter().any(|g| gids.contains(g));
        let seats = self.vpn_uids.contains(&peer.uid) || in_any(&self.vpn_gids);
        let operate = in_any(&self.operator_gids);
        Rights {
            seats,
            read: operate || self.status_public,
            operate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_table() {
        let policy = Policy {
            own_uid: 990,
            vpn_uids: vec![65534],
            vpn_gids: vec![120],
            operator_gids: vec![4],
            status_public: false,
        };
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        };
        let all = Rights {
            seats: true,
            read: true,
            operate: true,
        };
        let cases = [
            ("root", peer(0, 0, &[]), all),
            ("the daemon's own user", peer(990, 990, &[]), all),
            (
                "vpn user",
                peer(65534, 65534, &[]),
                Rights {
                    seats: true,
                    ..Rights::default()
                },
            ),
            (
                "vpn group as primary",
                peer(1000, 120, &[]),
                Rights {
                    seats: true,
                    ..Rights::default()
                },
            ),
            (
                "operator by supplementary group",
                peer(1000, 1000, &[4]),
                Rights {
                    seats: false,
                    read: true,
                    operate: true,
                },
            ),
            ("stranger", peer(1000, 1000, &[27]), Rights::default()),
        ];
        for (name, p, want) in cases {
            assert_eq!(policy.rights(&p), want, "{name}");
        }
        let public = Policy {
            status_public: true,
            ..policy
        };
        assert_eq!(
            public.rights(&peer(1000, 1000, &[])),
            Rights {
                read: true,
                ..Rights::default()
            }
        );
    }
}
