//! STUN responder.
