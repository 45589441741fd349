//! The DERP relay wire protocol, without I/O.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod stun;
