//! Cross-crate integration tests live in `tests/`; this library holds what they share that needs
//! dependencies of its own: a test DNS server ([`dns::TestDns`]).

pub mod dns;
