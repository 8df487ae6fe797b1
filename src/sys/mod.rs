//! The operating system edge, one file per job: `users` (names to ids),
//! `peer` (socket peer credentials), `process` (/proc: identity, parent),
//! `systemd` (notify, watchdog, socket activation, the admission socket).

pub mod peer;
pub mod process;
pub mod systemd;
pub mod users;
