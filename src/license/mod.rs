//! The license engine: records and their rules (`model`), lifecycle at an
//! instant (`lifecycle`), the seat cap and its timeline (`cap`), and signed
//! bundles (`bundle`). Everything here is pure; the clock is an argument.

pub mod bundle;
pub mod cap;
pub mod lease;
pub mod lifecycle;
pub mod model;

pub use cap::{Cap, Entitlement, Step};
pub use lifecycle::Status;
pub use model::{Binding, License, Pool, Rejected};
