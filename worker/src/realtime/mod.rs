//! Realtime sessions: the streaming policy (when to decode, what is final)
//! and the decode scheduler's choice. The WebSocket server that drives
//! them is built on these.

pub mod policy;
