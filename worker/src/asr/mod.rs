//! Speech recognition: VAD, Whisper, and the guards around it.
//!
//! - [`vad`]: speech regions and the time map back to the recording.
//! - [`guard`]: dropping invented and looping text.
//! - [`engine`]: the Whisper models and one transcription.

pub mod engine;
pub mod guard;
pub mod vad;

pub use engine::{Engine, EngineError, ModelPaths, Segment, TranscribeOptions, Transcript, Word};
