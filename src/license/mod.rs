//! The license engine: records and their rules (`model`), lifecycle at an
//! instant (`lifecycle`), the seat cap and its timeline (`cap`), signed
//! bundles (`bundle`), slice leases of shared pools (`lease`), the cloud's
//! signed time stamps (`stamp`), license warnings (`notices`), the engine's clock (`time`), the licenses in force (`in_force`) and the license report
//! (`report`). All of it is pure, the clock an argument, except `disk`: the
//! engine's files in the state directory.

pub mod bundle;
pub mod cap;
pub mod disk;
pub mod in_force;
pub mod lease;
pub mod lifecycle;
pub mod model;
pub mod notices;
pub mod report;
pub mod stamp;
pub mod time;

pub use cap::{Cap, Entitlement, Step};
pub use lifecycle::Status;
pub use model::{Binding, License, Pool, Rejected};
