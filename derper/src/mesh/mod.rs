//! Outbound mesh: the sources that tell a relay which peers of its region to dial.
pub mod dns;
pub mod membership;
