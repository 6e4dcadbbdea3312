//! CTranslate2 Whisper → whisper.cpp ggml.
//!
//! The hyper-parameters come from tensor shapes and the two head-count
//! scalars. The matrices are written in the chosen [`WeightType`] (f16 or
//! `Q8_0`), the convolution kernels f16, and biases, norms, the conv biases
//! (reshaped to `[d, 1]`) and the positional embeddings f32, because
//! whisper.cpp checks every tensor's type and requires exactly its set.

use super::ct2::{self, Ct2Model, DType, Variable};
use super::quant::{self, WeightType};
use super::{mel, vocab};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// ggml's file magic, "ggml" as a little-endian u32.
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("missing tensor {0} (is this a CTranslate2 Whisper model?)")]
    Missing(String),
    #[error("tensor {name} has shape {dims:?}, expected {expected}")]
    Shape {
        name: String,
        dims: Vec<usize>,
        expected: String,
    },
    #[error("vocabulary: {0}")]
    Vocabulary(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
}

/// whisper.cpp's eleven header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HParams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl HParams {
    /// The header fields in file order.
    pub fn fields(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub hparams: HParams,
    pub tensors: usize,
    pub vocabulary: usize,
    pub bytes: u64,
}

fn var<'a>(model: &'a Ct2Model, name: &str) -> Result<&'a Variable, ConvertError> {
    model
        .get(name)
        .ok_or_else(|| ConvertError::Missing(name.to_string()))
}

fn dims<const N: usize>(v: &Variable, name: &str) -> Result<[usize; N], ConvertError> {
    v.dims
        .clone()
        .try_into()
        .map_err(|dims| ConvertError::Shape {
            name: name.to_string(),
            dims,
            expected: format!("rank {N}"),
        })
}

/// Number of `prefix/layer_N/` blocks, by exact pattern (`layer_norm` must
/// not count).
fn count_layers(model: &Ct2Model, prefix: &str) -> i32 {
    let start = format!("{prefix}/layer_");
    let mut n = 0;
    for name in model.variables.keys() {
        if let Some(rest) = name.strip_prefix(&start) {
            if let Some((index, _)) = rest.split_once('/') {
                if let Ok(i) = index.parse::<i32>() {
                    n = n.max(i + 1);
                }
            }
        }
    }
    n
}

fn head_count(model: &Ct2Model, name: &str) -> Result<i32, ConvertError> {
    let v = var(model, name)?;
    v.scalar()
        .map(|h| h as i32)
        .filter(|h| *h > 0)
        .ok_or_else(|| ConvertError::Shape {
            name: name.to_string(),
            dims: v.dims.clone(),
            expected: "a positive scalar".into(),
        })
}

pub fn hparams(model: &Ct2Model) -> Result<HParams, ConvertError> {
    let [n_vocab, _] = dims::<2>(
        var(model, "decoder/embeddings/weight")?,
        "decoder/embeddings/weight",
    )?;
    let enc_pos = "encoder/position_encodings/encodings";
    let [n_audio_ctx, n_audio_state] = dims::<2>(var(model, enc_pos)?, enc_pos)?;
    let dec_pos = "decoder/position_encodings/encodings";
    let [n_text_ctx, n_text_state] = dims::<2>(var(model, dec_pos)?, dec_pos)?;
    let [_, n_mels, _] = dims::<3>(var(model, "encoder/conv1/weight")?, "encoder/conv1/weight")?;
    let h = HParams {
        n_vocab: n_vocab as i32,
        n_audio_ctx: n_audio_ctx as i32,
        n_audio_state: n_audio_state as i32,
        n_audio_head: head_count(model, "encoder/num_heads")?,
        n_audio_layer: count_layers(model, "encoder"),
        n_text_ctx: n_text_ctx as i32,
        n_text_state: n_text_state as i32,
        n_text_head: head_count(model, "decoder/num_heads")?,
        n_text_layer: count_layers(model, "decoder"),
        n_mels: n_mels as i32,
        ftype: 1,
    };
    if h.n_audio_layer == 0 || h.n_text_layer == 0 {
        return Err(ConvertError::Unsupported(
            "no encoder or decoder layers".into(),
        ));
    }
    Ok(h)
}

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    F32,
    F16,
    /// A matrix whisper.cpp creates with the model's weight type.
    Matrix,
}

/// One tensor to write: name, numpy-order dims, and its storage.
struct Out {
    name: String,
    dims: Vec<usize>,
    values: Vec<f32>,
    kind: Kind,
}

impl Out {
    fn new(name: impl Into<String>, dims: Vec<usize>, values: Vec<f32>) -> Out {
        let kind = match dims.len() {
            0 | 1 => Kind::F32,
            2 => Kind::Matrix,
            _ => Kind::F16,
        };
        Out {
            name: name.into(),
            dims,
            values,
            kind,
        }
    }
}

/// Rows `[from, to)` of a row-major `[rows, cols]` matrix.
fn rows(values: &[f32], cols: usize, from: usize, to: usize) -> Vec<f32> {
    values[from * cols..to * cols].to_vec()
}

fn linear(out: &mut Vec<Out>, model: &Ct2Model, src: &str, dst: &str) -> Result<(), ConvertError> {
    let w = var(model, &format!("{src}/weight"))?;
    out.push(Out::new(
        format!("{dst}.weight"),
        w.dims.clone(),
        w.to_f32(),
    ));
    if let Some(b) = model.get(&format!("{src}/bias")) {
        out.push(Out::new(format!("{dst}.bias"), b.dims.clone(), b.to_f32()));
    }
    Ok(())
}

fn layer_norm(
    out: &mut Vec<Out>,
    model: &Ct2Model,
    src: &str,
    dst: &str,
) -> Result<(), ConvertError> {
    for (from, to) in [("gamma", "weight"), ("beta", "bias")] {
        let v = var(model, &format!("{src}/{from}"))?;
        out.push(Out::new(format!("{dst}.{to}"), v.dims.clone(), v.to_f32()));
    }
    Ok(())
}

/// A fused `[3d, d]` (q, k, v) or `[2d, d]` (k, v) projection, split.
fn split_fused(
    out: &mut Vec<Out>,
    model: &Ct2Model,
    src: &str,
    dsts: &[&str],
    d: usize,
) -> Result<(), ConvertError> {
    let wname = format!("{src}/weight");
    let w = var(model, &wname)?;
    if w.dims != [dsts.len() * d, d] {
        return Err(ConvertError::Shape {
            name: wname,
            dims: w.dims.clone(),
            expected: format!("[{}, {d}]", dsts.len() * d),
        });
    }
    let wv = w.to_f32();
    let bias = model.get(&format!("{src}/bias")).map(Variable::to_f32);
    for (i, dst) in dsts.iter().enumerate() {
        out.push(Out::new(
            format!("{dst}.weight"),
            vec![d, d],
            rows(&wv, d, i * d, (i + 1) * d),
        ));
        // Whisper's key projections have no bias: the stored slice is zeros.
        if let Some(b) = &bias {
            if !dst.ends_with(".key") {
                out.push(Out::new(
                    format!("{dst}.bias"),
                    vec![d],
                    b[i * d..(i + 1) * d].to_vec(),
                ));
            }
        }
    }
    Ok(())
}

/// The parts every block has: self-attention (`attn`) and the MLP.
fn block(
    out: &mut Vec<Out>,
    model: &Ct2Model,
    s: &str,
    t: &str,
    d: usize,
) -> Result<(), ConvertError> {
    split_fused(
        out,
        model,
        &format!("{s}/self_attention/linear_0"),
        &[
            &format!("{t}.attn.query"),
            &format!("{t}.attn.key"),
            &format!("{t}.attn.value"),
        ],
        d,
    )?;
    linear(
        out,
        model,
        &format!("{s}/self_attention/linear_1"),
        &format!("{t}.attn.out"),
    )?;
    layer_norm(
        out,
        model,
        &format!("{s}/self_attention/layer_norm"),
        &format!("{t}.attn_ln"),
    )?;
    linear(
        out,
        model,
        &format!("{s}/ffn/linear_0"),
        &format!("{t}.mlp.0"),
    )?;
    linear(
        out,
        model,
        &format!("{s}/ffn/linear_1"),
        &format!("{t}.mlp.2"),
    )?;
    layer_norm(
        out,
        model,
        &format!("{s}/ffn/layer_norm"),
        &format!("{t}.mlp_ln"),
    )
}

fn map_tensors(model: &Ct2Model, h: &HParams) -> Result<Vec<Out>, ConvertError> {
    let mut out = Vec::new();
    for conv in ["conv1", "conv2"] {
        let w = var(model, &format!("encoder/{conv}/weight"))?;
        out.push(Out::new(
            format!("encoder.{conv}.weight"),
            w.dims.clone(),
            w.to_f32(),
        ));
        let b = var(model, &format!("encoder/{conv}/bias"))?;
        let mut bias = Out::new(format!("encoder.{conv}.bias"), vec![b.len(), 1], b.to_f32());
        bias.kind = Kind::F32;
        out.push(bias);
    }
    for (src, dst) in [
        (
            "encoder/position_encodings/encodings",
            "encoder.positional_embedding",
        ),
        (
            "decoder/position_encodings/encodings",
            "decoder.positional_embedding",
        ),
    ] {
        let v = var(model, src)?;
        let mut t = Out::new(dst, v.dims.clone(), v.to_f32());
        t.kind = Kind::F32;
        out.push(t);
    }
    layer_norm(&mut out, model, "encoder/layer_norm", "encoder.ln_post")?;
    for i in 0..h.n_audio_layer {
        let (s, t) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
        block(&mut out, model, &s, &t, h.n_audio_state as usize)?;
    }
    let d = h.n_text_state as usize;
    let emb = var(model, "decoder/embeddings/weight")?;
    out.push(Out::new(
        "decoder.token_embedding.weight",
        emb.dims.clone(),
        emb.to_f32(),
    ));
    layer_norm(&mut out, model, "decoder/layer_norm", "decoder.ln")?;
    for i in 0..h.n_text_layer {
        let (s, t) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
        block(&mut out, model, &s, &t, d)?;
        let cross = format!("{t}.cross_attn");
        linear(
            &mut out,
            model,
            &format!("{s}/attention/linear_0"),
            &format!("{cross}.query"),
        )?;
        split_fused(
            &mut out,
            model,
            &format!("{s}/attention/linear_1"),
            &[&format!("{cross}.key"), &format!("{cross}.value")],
            d,
        )?;
        linear(
            &mut out,
            model,
            &format!("{s}/attention/linear_2"),
            &format!("{cross}.out"),
        )?;
        layer_norm(
            &mut out,
            model,
            &format!("{s}/attention/layer_norm"),
            &format!("{cross}_ln"),
        )?;
    }
    Ok(out)
}

fn i32le(w: &mut impl Write, v: i32) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn write_ggml(
    w: &mut impl Write,
    h: &HParams,
    tokens: &[Vec<u8>],
    tensors: &[Out],
    weights: WeightType,
) -> io::Result<()> {
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in h.fields() {
        i32le(w, v)?;
    }
    let filters = mel::mel_filters(h.n_mels as usize);
    i32le(w, h.n_mels)?;
    i32le(w, mel::N_FREQS as i32)?;
    for f in filters {
        w.write_all(&f.to_le_bytes())?;
    }
    i32le(w, tokens.len() as i32)?;
    for t in tokens {
        i32le(w, t.len() as i32)?;
        w.write_all(t)?;
    }
    let mut buf = Vec::new();
    for t in tensors {
        let (ttype, encoding) = match t.kind {
            Kind::F32 => (0, None),
            Kind::F16 => (1, Some(WeightType::F16)),
            Kind::Matrix => (weights.tensor_type(), Some(weights)),
        };
        i32le(w, t.dims.len() as i32)?;
        i32le(w, t.name.len() as i32)?;
        i32le(w, ttype)?;
        for d in t.dims.iter().rev() {
            i32le(w, *d as i32)?;
        }
        w.write_all(t.name.as_bytes())?;
        buf.clear();
        match encoding {
            Some(e) => e.encode(&t.values, &mut buf),
            None => buf.extend(t.values.iter().flat_map(|v| v.to_le_bytes())),
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Convert the CTranslate2 model in `dir` (its `model.bin` and
/// `vocabulary.txt`) to a whisper.cpp file at `out`, with the matrices in
/// `weights`. The file appears only when complete.
pub fn convert_ct2_to_ggml(
    dir: &Path,
    out: &Path,
    weights: WeightType,
) -> Result<ConvertReport, ConvertError> {
    let model_path = dir.join("model.bin");
    let file = std::fs::File::open(&model_path).map_err(io_err(&model_path))?;
    let model = ct2::read_model(&mut io::BufReader::new(file)).map_err(io_err(&model_path))?;
    if model.variables.values().any(|v| v.dtype == DType::I8)
        && model.get("encoder/conv1/weight_scale").is_some()
    {
        return Err(ConvertError::Unsupported(
            "int8-quantised weights; use a float16 model".into(),
        ));
    }
    let mut h = hparams(&model)?;
    h.ftype = weights.header_ftype();
    let vocab_path = dir.join("vocabulary.txt");
    let text = std::fs::read_to_string(&vocab_path).map_err(io_err(&vocab_path))?;
    let tokens = vocab::regular_tokens(&text).map_err(ConvertError::Vocabulary)?;
    if tokens.len() as i32 >= h.n_vocab {
        return Err(ConvertError::Vocabulary(format!(
            "{} regular tokens for a vocabulary of {}",
            tokens.len(),
            h.n_vocab
        )));
    }
    let tensors = map_tensors(&model, &h)?;
    drop(model);
    if weights == WeightType::Q8_0 {
        let bad = tensors.iter().find(|t| {
            t.kind == Kind::Matrix
                && t.dims
                    .last()
                    .is_some_and(|d| !d.is_multiple_of(quant::Q8_0_BLOCK))
        });
        if let Some(t) = bad {
            return Err(ConvertError::Unsupported(format!(
                "{} has rows of {:?} values; Q8_0 needs multiples of {}",
                t.name,
                t.dims.last(),
                quant::Q8_0_BLOCK
            )));
        }
    }
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = BufWriter::new(file);
    write_ggml(&mut w, &h, &tokens, &tensors, weights).map_err(io_err(&tmp))?;
    w.flush().map_err(io_err(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    let bytes = std::fs::metadata(out).map_err(io_err(out))?.len();
    Ok(ConvertReport {
        hparams: h,
        tensors: tensors.len(),
        vocabulary: tokens.len(),
        bytes,
    })
}

/// The number of tensors whisper.cpp expects for these hyper-parameters.
pub fn expected_tensor_count(h: &HParams) -> usize {
    // Encoder: 2 convs × (w, b) + positional + ln_post (2) + per layer
    // attn q(w,b) k(w) v(w,b) out(w,b) ln(2) mlp 0(2) 2(2) ln(2) = 15.
    // Decoder: token + positional + ln (2) + per layer: self 9 + cross 9
    // (same shape) + mlp 6 = 24.
    let enc = 4 + 1 + 2 + 15 * h.n_audio_layer as usize;
    let dec = 1 + 1 + 2 + 24 * h.n_text_layer as usize;
    enc + dec
}
