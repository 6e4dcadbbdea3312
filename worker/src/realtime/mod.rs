//! Realtime sessions, built up from pure parts:
//! - [`policy`]: when to decode, what is final, what is partial, and which
//!   session's decode runs next.
//! - [`session`]: one session's audio: frames checked and paced, raw bytes
//!   kept for storage, 16 kHz audio and VAD decisions into the policy.
//! - [`pool`]: the decode threads every session shares, and who goes next.
//! - [`server`]: the WebSocket server gateways hand sessions to, the
//!   worker registry and heartbeat, and each session's persistence.

pub mod policy;
pub mod pool;
pub mod server;
pub mod session;
