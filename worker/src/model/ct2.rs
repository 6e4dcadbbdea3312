//! Reader for CTranslate2's `model.bin`, binary format version 6.
//!
//! Layout (little-endian): `u32` version, string spec name, `u32` revision,
//! `u32` variable count, then per variable: string name, `u8` rank, rank ×
//! `u32` dims, `u8` dtype, `u32` byte count, bytes; then `u32` alias count
//! and alias pairs. A string is a `u16` length (counting a trailing NUL),
//! the bytes, and the NUL.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// CTranslate2's data type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_id(id: u8) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// One stored variable.
#[derive(Debug, Clone)]
pub struct Variable {
    pub dims: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl Variable {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32, whatever the stored type.
    pub fn to_f32(&self) -> Vec<f32> {
        let chunks = self.data.chunks_exact(self.dtype.size());
        match self.dtype {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => chunks
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => chunks
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::I8 => chunks.map(|c| f32::from(c[0] as i8)).collect(),
            DType::I16 => chunks
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::I32 => chunks
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        }
    }

    /// The single value of a scalar (such as `encoder/num_heads`).
    pub fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.to_f32()[0])
    }
}

/// A parsed `model.bin`.
#[derive(Debug)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Variable>,
    pub aliases: BTreeMap<String, String>,
}

impl Ct2Model {
    /// A variable by name, following aliases.
    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.variables.get(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.variables.get(target))
        })
    }
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u16(r)? as usize;
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    if bytes.pop() != Some(0) {
        return Err(invalid("string is not NUL-terminated".into()));
    }
    String::from_utf8(bytes).map_err(|e| invalid(format!("string is not UTF-8: {e}")))
}

/// The only binary version this reader understands.
pub const SUPPORTED_VERSION: u32 = 6;
/// Refuse absurd headers before allocating for them.
const MAX_VARIABLES: u32 = 100_000;
const MAX_RANK: u8 = 8;
const MAX_TENSOR_BYTES: u64 = 8 << 30;

/// Parse a whole `model.bin`.
pub fn read_model(r: &mut impl Read) -> io::Result<Ct2Model> {
    let version = read_u32(r)?;
    if version != SUPPORTED_VERSION {
        return Err(invalid(format!(
            "CTranslate2 binary version {version} is not supported (expected {SUPPORTED_VERSION})"
        )));
    }
    let spec = read_string(r)?;
    let revision = read_u32(r)?;
    let count = read_u32(r)?;
    if count > MAX_VARIABLES {
        return Err(invalid(format!("{count} variables is implausible")));
    }
    let mut variables = BTreeMap::new();
    for _ in 0..count {
        let name = read_string(r)?;
        let rank = read_u8(r)?;
        if rank > MAX_RANK {
            return Err(invalid(format!("{name}: rank {rank} is implausible")));
        }
        let dims = (0..rank)
            .map(|_| read_u32(r).map(|d| d as usize))
            .collect::<io::Result<Vec<_>>>()?;
        let dtype_id = read_u8(r)?;
        let dtype = DType::from_id(dtype_id)
            .ok_or_else(|| invalid(format!("{name}: unknown dtype id {dtype_id}")))?;
        let nbytes = read_u32(r)? as u64;
        let expected = dims.iter().product::<usize>() as u64 * dtype.size() as u64;
        if nbytes != expected || nbytes > MAX_TENSOR_BYTES {
            return Err(invalid(format!(
                "{name}: {nbytes} bytes for dims {dims:?} of {dtype:?} (expected {expected})"
            )));
        }
        let mut data = vec![0u8; nbytes as usize];
        r.read_exact(&mut data)?;
        variables.insert(name, Variable { dims, dtype, data });
    }
    let mut aliases = BTreeMap::new();
    // Older writers end the file without an alias section.
    if let Ok(n) = read_u32(r) {
        for _ in 0..n {
            let alias = read_string(r)?;
            let target = read_string(r)?;
            aliases.insert(alias, target);
        }
    }
    Ok(Ct2Model {
        spec,
        revision,
        variables,
        aliases,
    })
}

/// Writes the format; used by tests to build small models.
#[cfg(test)]
pub(crate) fn write_model(
    w: &mut impl std::io::Write,
    spec: &str,
    vars: &[(&str, Vec<usize>, DType, Vec<u8>)],
) -> io::Result<()> {
    fn string(w: &mut impl std::io::Write, s: &str) -> io::Result<()> {
        w.write_all(&((s.len() + 1) as u16).to_le_bytes())?;
        w.write_all(s.as_bytes())?;
        w.write_all(&[0])
    }
    w.write_all(&SUPPORTED_VERSION.to_le_bytes())?;
    string(w, spec)?;
    w.write_all(&1u32.to_le_bytes())?;
    w.write_all(&(vars.len() as u32).to_le_bytes())?;
    for (name, dims, dtype, data) in vars {
        string(w, name)?;
        w.write_all(&[dims.len() as u8])?;
        for d in dims {
            w.write_all(&(*d as u32).to_le_bytes())?;
        }
        let id = match dtype {
            DType::F32 => 0u8,
            DType::I8 => 1,
            DType::I16 => 2,
            DType::I32 => 3,
            DType::F16 => 4,
            DType::BF16 => 5,
        };
        w.write_all(&[id])?;
        w.write_all(&(data.len() as u32).to_le_bytes())?;
        w.write_all(data)?;
    }
    w.write_all(&0u32.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect()
    }

    #[test]
    fn round_trips_variables_and_scalars() {
        let mut buf = Vec::new();
        write_model(
            &mut buf,
            "WhisperSpec",
            &[
                (
                    "a/weight",
                    vec![2, 3],
                    DType::F16,
                    f16_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
                ),
                (
                    "encoder/num_heads",
                    vec![],
                    DType::I32,
                    6i32.to_le_bytes().to_vec(),
                ),
            ],
        )
        .unwrap();
        let model = read_model(&mut buf.as_slice()).unwrap();
        assert_eq!(model.spec, "WhisperSpec");
        let a = model.get("a/weight").unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!(model.get("encoder/num_heads").unwrap().scalar(), Some(6.0));
    }

    #[test]
    fn refuses_bad_files() {
        assert!(
            read_model(&mut &[5u8, 0, 0, 0][..]).is_err(),
            "wrong version"
        );
        assert!(read_model(&mut &[6u8, 0, 0][..]).is_err(), "truncated");
        let mut buf = Vec::new();
        write_model(&mut buf, "S", &[("x", vec![4], DType::F32, vec![0; 16])]).unwrap();
        // Claim more bytes than the dims allow.
        let pos = buf.len() - 4 - 16 - 4;
        buf[pos..pos + 4].copy_from_slice(&17u32.to_le_bytes());
        assert!(read_model(&mut buf.as_slice()).is_err());
    }
}
