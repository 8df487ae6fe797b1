//! The one integration-test binary: real `seatgate` processes on temp dirs.
//! Shared fixtures live in `it/util.rs`; each area has its own module.

mod it;
