//! Seat admission: the wire protocol (`protocol`, bytes only) and its
//! blocking client (`client`), the session table (`table`, pure), the
//! snapshot file format (`snapshot`, pure), its crash-safe journal
//! (`journal`), the one-daemon lock on the runtime directory (`lock`), the
//! admission core that decides (`seats`), peer rights (`access`, pure) and
//! the Unix-socket server (`server`), and the over-cap plan (`over_cap`,
//! pure).

pub mod access;
pub mod client;
pub mod journal;
pub mod lock;
pub mod over_cap;
pub mod policy;
pub mod protocol;
pub mod seats;
pub mod server;
pub mod snapshot;
pub mod table;
