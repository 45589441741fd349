//! DERP relay.
