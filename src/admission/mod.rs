//! Seat admission: the wire protocol (`protocol`, bytes only), the session
//! table (`table`, pure), its crash-safe journal (`journal`), the seat
//! authority that joins table and licenses under one lock (`seats`), peer
//! rights (`access`, pure) and the Unix-socket server (`server`).

pub mod access;
pub mod client;
pub mod journal;
pub mod protocol;
pub mod seats;
pub mod server;
pub mod table;
