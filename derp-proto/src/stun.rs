//! STUN helpers (placeholder until the stunner work lands).
