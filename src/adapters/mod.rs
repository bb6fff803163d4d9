//! Backends behind the ports. Only adapters know a storage or transport API; services see
//! the traits of `crate::ports`.

pub mod aws;
pub mod embedded;
