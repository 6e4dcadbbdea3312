//! Weight formats for the converted file: ggml's f16 and its 8-bit block
//! format `Q8_0` (32 weights share one f16 scale: 34 bytes per block).

use std::str::FromStr;

/// Values per `Q8_0` block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per `Q8_0` block: an f16 scale and 32 signed bytes.
pub const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;
/// ggml encodes the quantisation version into the header's ftype.
const QNT_VERSION: i32 = 2;
const QNT_VERSION_FACTOR: i32 = 1000;

/// How the large matrices are stored. Convolutions stay f16 and vectors
/// f32 whatever is chosen, as whisper.cpp expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    #[default]
    F16,
    Q8_0,
}

impl WeightType {
    /// The header's ftype field.
    pub fn header_ftype(self) -> i32 {
        match self {
            WeightType::F16 => 1,
            WeightType::Q8_0 => 7 + QNT_VERSION * QNT_VERSION_FACTOR,
        }
    }

    /// The ftype whisper.cpp reports after loading (without the version).
    pub fn loaded_ftype(self) -> i32 {
        self.header_ftype() % QNT_VERSION_FACTOR
    }

    /// ggml's tensor type id for a matrix.
    pub fn tensor_type(self) -> i32 {
        match self {
            WeightType::F16 => 1,
            WeightType::Q8_0 => 8,
        }
    }

    /// Encode one matrix, row-major with rows a multiple of the block size
    /// for `Q8_0`.
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            WeightType::F16 => encode_f16(values, out),
            WeightType::Q8_0 => encode_q8_0(values, out),
        }
    }
}

impl FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(WeightType::F16),
            "q8_0" | "q8" => Ok(WeightType::Q8_0),
            other => Err(format!("unknown weight type {other:?} (use f16 or q8_0)")),
        }
    }
}

pub fn encode_f16(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 2);
    for v in values {
        out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
    }
}

/// Symmetric 8-bit blocks: scale = max |x| / 127, q = round(x / scale).
pub fn encode_q8_0(values: &[f32], out: &mut Vec<u8>) {
    assert!(
        values.len().is_multiple_of(Q8_0_BLOCK),
        "Q8_0 needs a multiple of {Q8_0_BLOCK} values, got {}",
        values.len()
    );
    out.reserve(values.len() / Q8_0_BLOCK * Q8_0_BYTES);
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(scale).to_le_bytes());
        for v in block {
            out.push(((v * inv).round().clamp(-127.0, 127.0) as i8) as u8);
        }
    }
}

/// The inverse of [`encode_q8_0`], for tests and checks.
pub fn decode_q8_0(bytes: &[u8]) -> Vec<f32> {
    let mut values = Vec::with_capacity(bytes.len() / Q8_0_BYTES * Q8_0_BLOCK);
    for block in bytes.chunks_exact(Q8_0_BYTES) {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        values.extend(block[2..].iter().map(|q| *q as i8 as f32 * scale));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_are_34_bytes_and_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..96)
            .map(|i| ((i * 37) % 101) as f32 / 13.0 - 3.5)
            .collect();
        let mut bytes = Vec::new();
        encode_q8_0(&values, &mut bytes);
        assert_eq!(bytes.len(), 3 * Q8_0_BYTES);
        let back = decode_q8_0(&bytes);
        for (block, got) in values.chunks(32).zip(back.chunks(32)) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (a, b) in block.iter().zip(got) {
                // Half a step, plus the f16 rounding of the scale.
                assert!((a - b).abs() <= step * 0.5 + amax * 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_largest_value_maps_to_127_and_zero_blocks_stay_zero() {
        let mut block = vec![0.0f32; 32];
        block[5] = -2.0;
        block[9] = 1.0;
        let mut bytes = Vec::new();
        encode_q8_0(&block, &mut bytes);
        encode_q8_0(&[0.0; 32], &mut bytes);
        assert_eq!(bytes[2 + 5] as i8, -127);
        assert_eq!(bytes[2 + 9] as i8, 64);
        assert!(bytes[Q8_0_BYTES..].iter().all(|b| *b == 0));
    }

    #[test]
    fn header_ftype_carries_the_quantisation_version() {
        assert_eq!(WeightType::F16.header_ftype(), 1);
        assert_eq!(WeightType::Q8_0.header_ftype(), 2007);
        assert_eq!(WeightType::Q8_0.loaded_ftype(), 7);
        assert_eq!("Q8_0".parse::<WeightType>(), Ok(WeightType::Q8_0));
        assert!("q4_k".parse::<WeightType>().is_err());
    }
}
