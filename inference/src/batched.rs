//! A decoder of the llama and qwen2 families that runs several sequences at
//! once, so that concurrent requests share each pass over the weights.
//!
//! candle-transformers' models keep one sequence's key/value cache inside
//! the model, which allows one request at a time. This decoder keeps the
//! caches outside, in a [`Batch`]: each sequence is prefilled on its own,
//! then joins the batch, and every decoding step runs one token of every
//! sequence through the weights together. The arithmetic is the same as
//! candle's models (`quantized_llama`, `quantized_qwen2`, `qwen2`); a test
//! in `tests/models.rs` holds this decoder to their output.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::decode_attention;
use crate::qgemm;
use crate::qgemv::{self, Format, QMatrix};

/// How a GGUF model's weights are held on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Two copies: dequantized to f32 for prompts (a gemm over many tokens,
    /// bound by arithmetic) and quantized for decoding steps (one token per
    /// row: every weight is read once per token, so a step is bound by the
    /// bytes read, 4 to 6 times fewer quantized). The default on CPUs
    /// without AVX-512 VNNI, where prompts on the quantized weights
    /// (`qgemm.rs`'s AVX2 kernels) are slower than on f32.
    Both,
    /// One copy, quantized: the file's format, or one with fast kernels on
    /// this CPU (see [`for_decoding`]), for prompts and decoding steps. The
    /// default with AVX-512 VNNI, where our kernels (`qgemv.rs`) prefill
    /// faster than the f32 copy (BENCHMARKS.md, "Q4_K and Q6_K on our VNNI
    /// tiles") in a third to a sixth of the memory.
    Quantized,
    /// Dequantized to f32: 4 to 7 times the memory and slower, but the
    /// arithmetic of candle's own models under `CANDLE_DEQUANTIZE_ALL`
    /// (the reference the tests hold this decoder to).
    Dequantized,
}

impl Default for Precision {
    /// [`Precision::Quantized`] where this CPU runs our kernels, else
    /// [`Precision::Both`].
    fn default() -> Self {
        if qgemv::available() {
            Self::Quantized
        } else {
            Self::Both
        }
    }
}

/// A weight matrix: dense (safetensors, a GGUF's f32 and f16 tensors, GGUF
/// weights dequantized or on a GPU), one quantized copy for prompts and
/// decoding steps alike, or both (see [`Precision::Both`]).
enum Linear {
    Dense(QMatMul),
    Quantized(Arc<Quantized>),
    Both {
        dense: QMatMul,
        quantized: Arc<Quantized>,
    },
}

/// The copy of a [`Linear`] that multiplies a given input.
enum Matrix<'a> {
    Dense(&'a QMatMul),
    Quantized(&'a Quantized),
}

/// Quantized weights (see [`for_decoding`]).
enum Quantized {
    /// On candle's kernels for decoding steps, and for prompts on ours
    /// (`qgemm.rs`) where this CPU has one for the format, else candle's.
    Candle {
        weights: Arc<QTensor>,
        prompt: Option<qgemm::Kernel>,
    },
    /// On ours (`qgemv.rs`).
    Own(QMatrix),
}

impl Linear {
    /// `t` as `precision` says on the CPU (see [`for_decoding`]),
    /// dequantized elsewhere and for f32, f16 and bf16 tensors.
    fn from_gguf(t: QTensor, device: &Device, precision: Precision) -> candle_core::Result<Self> {
        Self::from_gguf_on(t, device, precision, qgemv::available())
    }

    /// [`Linear::from_gguf`], with our kernels or without them.
    fn from_gguf_on(
        t: QTensor,
        device: &Device,
        precision: Precision,
        own: bool,
    ) -> candle_core::Result<Self> {
        let quantizable = device.is_cpu()
            && !matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        Ok(match precision {
            Precision::Quantized if quantizable => Self::Quantized(Arc::new(for_decoding(t, own)?)),
            Precision::Both if quantizable => Self::Both {
                dense: QMatMul::Tensor(t.dequantize(device)?),
                quantized: Arc::new(for_decoding(t, own)?),
            },
            _ => Self::Dense(QMatMul::Tensor(t.dequantize(device)?)),
        })
    }

    /// The copy that multiplies a decoding step's rows (`step`) or a
    /// prompt's.
    fn matrix(&self, step: bool) -> Matrix<'_> {
        match self {
            Self::Dense(d) => Matrix::Dense(d),
            Self::Quantized(q) => Matrix::Quantized(q),
            Self::Both { quantized, .. } if step => Matrix::Quantized(quantized),
            Self::Both { dense, .. } => Matrix::Dense(dense),
        }
    }

    /// `x` `(tokens, in)` times the weight. `step`: the rows are one token
    /// of each sequence of a decoding step, and a row's result must not
    /// depend on the rows beside it: our kernels take all rows in one pass
    /// over the weights with each row's arithmetic unchanged, and candle's
    /// are called row by row there (it multiplies several rows of some
    /// quantized types with other kernels than one). A prompt's tokens go
    /// through one product together (`qgemm.rs` where it has the format).
    fn forward(&self, x: &Tensor, step: bool) -> candle_core::Result<Tensor> {
        Ok(Self::forward_all(&[self], x, step)?.remove(0))
    }

    /// [`Linear::forward`] for weights that multiply the same `x` (q, k
    /// and v; gate and up): in one call where our kernels take them all
    /// (one quantization of `x`, one parallel region).
    fn forward_all(ws: &[&Self], x: &Tensor, step: bool) -> candle_core::Result<Vec<Tensor>> {
        let quantized: Option<Vec<&Quantized>> = ws
            .iter()
            .map(|w| match w.matrix(step) {
                Matrix::Quantized(q) => Some(q),
                Matrix::Dense(_) => None,
            })
            .collect();
        let Some(quantized) = quantized else {
            return ws
                .iter()
                .map(|w| match w.matrix(step) {
                    Matrix::Dense(d) => d.forward(x),
                    Matrix::Quantized(q) => products(&[q], x, step).map(|mut p| p.remove(0)),
                })
                .collect();
        };
        products(&quantized, x, step)
    }
}

/// `ws` times `x` `(rows, in)`, each `(rows, out)`; `step` as in
/// [`Linear::forward`].
fn products(ws: &[&Quantized], x: &Tensor, step: bool) -> candle_core::Result<Vec<Tensor>> {
    let own: Option<Vec<&QMatrix>> = ws
        .iter()
        .map(|w| match w {
            Quantized::Own(m) => Some(m),
            Quantized::Candle { .. } => None,
        })
        .collect();
    if let Some(own) = own {
        // All rows in one call: each tile of weights is read once.
        return own_products(&own, x);
    }
    let rows = x.dim(0)?;
    if !step && rows > 1 {
        // A prompt: all its tokens in one product per weight, rounded to
        // 8 bits once for all of them.
        let mut prompt = None;
        return ws
            .iter()
            .map(|w| match w {
                Quantized::Own(m) => Ok(own_products(&[m], x)?.remove(0)),
                Quantized::Candle {
                    weights,
                    prompt: Some(kernel),
                } => {
                    let (out, cols) = weights.shape().dims2()?;
                    if prompt.is_none() {
                        let values = x.flatten_all()?.to_vec1::<f32>()?;
                        prompt = Some(qgemm::Prompt::new(&values, cols));
                    }
                    let prompt = prompt.as_ref().expect("made above");
                    let products = qgemm::matmul(*kernel, &weights.data()?, out, prompt);
                    Tensor::from_vec(products, (rows, out), x.device())
                }
                Quantized::Candle { weights, .. } => x.apply_op1_no_bwd(weights.as_ref()),
            })
            .collect();
    }
    let mut out: Vec<Vec<Tensor>> = vec![Vec::with_capacity(rows); ws.len()];
    for r in 0..rows {
        for (o, p) in out.iter_mut().zip(row_products(ws, &x.narrow(0, r, 1)?)?) {
            o.push(p);
        }
    }
    out.iter().map(|o| Tensor::cat(o, 0)).collect()
}

/// Our `ms` times `x` `(rows, in)`, each `(rows, out)`.
fn own_products(ms: &[&QMatrix], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let rows = x.dim(0)?;
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    QMatrix::gemv_many(ms, &values)
        .into_iter()
        .map(|v| {
            let n = v.len() / rows;
            Tensor::from_vec(v, (rows, n), x.device())
        })
        .collect()
}

/// `ws` (not all ours) times one row `x` `(1, in)`, each `(1, out)`.
fn row_products(ws: &[&Quantized], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let candle: Option<Vec<&QTensor>> = ws
        .iter()
        .map(|w| match w {
            Quantized::Candle { weights, .. } => Some(weights.as_ref()),
            Quantized::Own(_) => None,
        })
        .collect();
    if let Some(candle) = candle.filter(|c| c.len() > 1) {
        // Where candle can (AVX-512 VNNI, the same K-quant, 256-multiple
        // columns).
        if let Some(products) = QTensor::gemv_fused_shared_lhs(&candle, x)? {
            return Ok(products);
        }
    }
    ws.iter()
        .map(|w| match w {
            Quantized::Own(m) => Ok(own_products(&[m], x)?.remove(0)),
            Quantized::Candle { weights, .. } => x.apply_op1_no_bwd(weights.as_ref()),
        })
        .collect()
}

impl Quantized {
    /// `t` on candle's kernels (and ours for prompts where there is one).
    fn candle(t: QTensor) -> Self {
        Self::Candle {
            prompt: qgemm::kernel(&t),
            weights: Arc::new(t),
        }
    }

    /// Rows `ids` of the weights, dequantized, one after the other: the
    /// embeddings of tokens, looked up in the quantized table.
    fn rows(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let (rows, cols) = self.shape();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= rows) {
            candle_core::bail!("token id {id} is outside the vocabulary of {rows}");
        }
        match self {
            Self::Own(m) => Ok(m.rows(ids)),
            Self::Candle { weights: t, .. } => {
                let data = t.data()?;
                let dtype = t.dtype();
                let size = cols / dtype.block_size() * dtype.type_size();
                let mut picked = Vec::with_capacity(ids.len() * size);
                for &id in ids {
                    picked.extend_from_slice(&data[id as usize * size..][..size]);
                }
                let storage = QStorage::from_data(Cow::Owned(picked), &Device::Cpu, dtype)?;
                QTensor::new(storage, (ids.len(), cols))?
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()
            }
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Self::Own(m) => m.shape(),
            Self::Candle { weights, .. } => weights.shape().dims2().unwrap_or_default(),
        }
    }
}

/// The token embeddings: dense rows, or rows dequantized as they are
/// looked up in the quantized table (the output's own copy where the model
/// ties them: one copy of the table in memory).
enum Embedding {
    Dense(candle_nn::Embedding),
    Quantized(Arc<Quantized>),
}

impl Embedding {
    /// The embeddings of `ids` `(rows, tokens)`, `(rows * tokens, hidden)`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(e) => e.forward(ids)?.reshape((ids.elem_count(), ())),
            Self::Quantized(table) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let values = table.rows(&ids)?;
                Tensor::from_vec(values, (ids.len(), table.shape().1), &Device::Cpu)
            }
        }
    }
}

/// `t` in a format with fast CPU dot products. candle 0.11's Q4_1, Q5_0
/// and Q5_1 dot products are scalar (they took 67% of a Qwen2.5 decoding
/// step in a profile: its Q4_K_M file stores most matrices as Q5_0, since
/// 896 columns do not divide into 256-wide K-quant blocks).
///
/// With AVX-512 VNNI, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K run on our kernels
/// (`qgemv.rs`), on the file's bytes repacked. Otherwise Q5_0 becomes Q8_0
/// exactly (the same scale and integers), Q4_1 is requantized to Q8_0, and
/// both run on candle's AVX2 Q8_0 kernel, and the K-quants stay on
/// candle's (prompts on `qgemm.rs`'s AVX2 kernels). Q5_1 is requantized to
/// Q8_0 either way (an error below half of Q8_0's step, 1/254 of a
/// block's largest weight, much finer than its own). Q4_0 and the other
/// K-quants stay on candle's kernels.
fn for_decoding(t: QTensor, own: bool) -> candle_core::Result<Quantized> {
    let (rows, cols) = t.shape().dims2()?;
    let blocks = match t.dtype() {
        GgmlDType::Q4_1 if own => Some((Format::Q4_1, t.data()?.into_owned())),
        GgmlDType::Q5_0 if own => Some((Format::Q5_0, t.data()?.into_owned())),
        GgmlDType::Q8_0 => Some((Format::Q8_0, t.data()?.into_owned())),
        GgmlDType::Q4K if own => Some((Format::Q4K, t.data()?.into_owned())),
        GgmlDType::Q6K if own => Some((Format::Q6K, t.data()?.into_owned())),
        GgmlDType::Q5_0 => Some((Format::Q8_0, q5_0_to_q8_0(&t.data()?))),
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => Some((
            Format::Q8_0,
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
                .data()?
                .into_owned(),
        )),
        _ => None,
    };
    match blocks {
        Some((format, bytes)) if own => QMatrix::new(format, &bytes, rows, cols)
            .map(Quantized::Own)
            .map_err(|e| candle_core::Error::Msg(e.to_string())),
        Some((_, bytes)) => {
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q8_0)?;
            Ok(Quantized::candle(QTensor::new(storage, (rows, cols))?))
        }
        None => Ok(Quantized::candle(t)),
    }
}

/// GGML's Q5_0 blocks (f16 scale, 32 high bits, 16 bytes of low nibbles:
/// 22 bytes for 32 weights `scale * (q - 16)`) as Q8_0 blocks (f16 scale,
/// 32 signed bytes) of the same values.
fn q5_0_to_q8_0(q5: &[u8]) -> Vec<u8> {
    const IN: usize = 22;
    const OUT: usize = 34;
    let mut out = Vec::with_capacity(q5.len() / IN * OUT);
    for block in q5.chunks_exact(IN) {
        let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        let low = &block[6..];
        out.extend_from_slice(&block[..2]);
        let mut q = [0u8; 32];
        for j in 0..16 {
            let bit = |i: usize| (((high >> i) & 1) as u8) << 4;
            q[j] = ((low[j] & 0x0f) | bit(j)).wrapping_sub(16);
            q[j + 16] = ((low[j] >> 4) | bit(j + 16)).wrapping_sub(16);
        }
        out.extend_from_slice(&q);
    }
    out
}

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    /// qwen2 has biases on q, k and v; llama has none.
    bias: Option<[Tensor; 3]>,
    attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The weights and shape of one model.
pub(crate) struct Decoder {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    eps: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Rotary tables, `(positions, head_dim / 2)`, in the activations' dtype.
    cos: Tensor,
    sin: Tensor,
    /// GGUF llama weights are laid out for interleaved rotary pairs;
    /// qwen2 (GGUF and Hugging Face) uses halves.
    interleaved: bool,
    /// How GGUF weights are held; our decoding attention runs only on
    /// quantized decoding steps, the reference (dequantized) being candle's.
    precision: Precision,
    dtype: DType,
    device: Device,
}

/// Columns of key/value cache allocated ahead of need, so that a decoding
/// step writes its column in place instead of copying the whole cache.
const ROOM: usize = 128;

/// The key/value caches of the sequences being decoded together, one row
/// each. Rows are aligned at the right: a row shorter than the longest
/// starts with `starts[row]` columns of padding that the mask hides.
#[derive(Default)]
pub(crate) struct Batch {
    /// Per layer, keys and values `(rows, kv_heads, capacity, head_dim)`;
    /// the first `len` columns are in use.
    kv: Vec<(Tensor, Tensor)>,
    starts: Vec<usize>,
    len: usize,
}

/// One sequence's caches after its prefill, per layer
/// `(1, kv_heads, tokens, head_dim)`. Cloning shares the tensors.
#[derive(Clone)]
pub(crate) struct Prefilled {
    kv: Vec<(Tensor, Tensor)>,
    tokens: usize,
}

/// `t`'s first `len` columns (dim 2), `left` columns of zeros before them
/// and `ROOM` after: a fresh contiguous cache.
fn with_room(t: &Tensor, len: usize, left: usize) -> candle_core::Result<Tensor> {
    t.narrow(2, 0, len)?.pad_with_zeros(2, left, ROOM)
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// Adds a prefilled sequence as the last row.
    pub fn push(&mut self, seq: Prefilled) -> candle_core::Result<()> {
        if self.rows() == 0 {
            self.kv = seq
                .kv
                .iter()
                .map(|(k, v)| Ok((with_room(k, seq.tokens, 0)?, with_room(v, seq.tokens, 0)?)))
                .collect::<candle_core::Result<_>>()?;
            self.starts = vec![0];
            self.len = seq.tokens;
            return Ok(());
        }
        let (pad_old, pad_new) = if seq.tokens > self.len {
            (seq.tokens - self.len, 0)
        } else {
            (0, self.len - seq.tokens)
        };
        for ((k, v), (k_new, v_new)) in self.kv.iter_mut().zip(&seq.kv) {
            *k = Tensor::cat(
                &[
                    &with_room(k, self.len, pad_old)?,
                    &with_room(k_new, seq.tokens, pad_new)?,
                ],
                0,
            )?;
            *v = Tensor::cat(
                &[
                    &with_room(v, self.len, pad_old)?,
                    &with_room(v_new, seq.tokens, pad_new)?,
                ],
                0,
            )?;
        }
        for start in &mut self.starts {
            *start += pad_old;
        }
        self.starts.push(pad_new);
        self.len += pad_old;
        Ok(())
    }

    /// Keeps only `rows` (in order), and drops the padding no row needs.
    pub fn keep(&mut self, rows: &[usize]) -> candle_core::Result<()> {
        if rows.len() == self.rows() {
            return Ok(());
        }
        if rows.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        let device = self.kv[0].0.device().clone();
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), &device)?;
        let starts: Vec<usize> = rows.iter().map(|&r| self.starts[r]).collect();
        let unused = starts.iter().copied().min().unwrap_or(0);
        let len = self.len - unused;
        for (k, v) in &mut self.kv {
            *k = with_room(&k.index_select(&index, 0)?.narrow(2, unused, len)?, len, 0)?;
            *v = with_room(&v.index_select(&index, 0)?.narrow(2, unused, len)?, len, 0)?;
        }
        self.starts = starts.into_iter().map(|s| s - unused).collect();
        self.len = len;
        Ok(())
    }

    /// Writes one new column of `layer` in place (growing the cache when
    /// it is full) and returns the columns in use.
    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let len = self.len;
        let (keys, values) = &mut self.kv[layer];
        if keys.dim(2)? == len {
            *keys = with_room(keys, len, 0)?;
            *values = with_room(values, len, 0)?;
        }
        keys.slice_set(k, 2, len)?;
        values.slice_set(v, 2, len)?;
        Ok((keys.narrow(2, 0, len + 1)?, values.narrow(2, 0, len + 1)?))
    }
}

fn rotary_tables(
    dim: usize,
    base: f32,
    positions: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / dim as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, dim / 2))?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&inv)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

impl Decoder {
    /// Reads a GGUF file of the llama or qwen2 architecture (weights held
    /// as `precision` says; activations are f32).
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        precision: Precision,
    ) -> anyhow::Result<Self> {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(
            arch == "llama" || arch == "qwen2",
            "architecture {arch:?} is not llama or qwen2"
        );
        let get = |key: &str| {
            content
                .metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| anyhow::anyhow!("the GGUF has no {arch}.{key}"))
        };
        let experts = get("expert_count")
            .and_then(|v| Ok(v.to_u32()?))
            .unwrap_or(0);
        anyhow::ensure!(
            experts == 0,
            "mixture-of-experts models ({experts} experts) are not supported"
        );
        let heads = get("attention.head_count")?.to_u32()? as usize;
        let kv_heads = get("attention.head_count_kv")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        let blocks = get("block_count")?.to_u32()? as usize;
        let context = get("context_length")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = get("rope.freq_base")
            .and_then(|v| Ok(v.to_f32()?))
            .unwrap_or(10_000.0);
        let head_dim = hidden / heads;
        let rope_dim = get("rope.dimension_count")
            .and_then(|v| Ok(v.to_u32()? as usize))
            .unwrap_or(head_dim);
        anyhow::ensure!(
            rope_dim == head_dim,
            "partial rotary embeddings ({rope_dim} of {head_dim} dimensions) are not supported"
        );
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let dense = |t: candle_core::quantized::QTensor| t.dequantize(device);
        let table = tensor("token_embd.weight")?;
        let quantizable = device.is_cpu()
            && !matches!(
                table.dtype(),
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            );
        let quantized = quantizable && precision == Precision::Quantized;
        let (embed, output) = match tensor("output.weight") {
            Ok(w) => {
                let embed = if quantized {
                    // Looked up only: the file's blocks as they are.
                    Embedding::Quantized(Arc::new(Quantized::candle(table)))
                } else {
                    Embedding::Dense(candle_nn::Embedding::new(dense(table)?, hidden))
                };
                (embed, Linear::from_gguf(w, device, precision)?)
            }
            // Tied to the embeddings: one quantized table for both.
            Err(_) if quantized => {
                let table = Arc::new(for_decoding(table, qgemv::available())?);
                (
                    Embedding::Quantized(table.clone()),
                    Linear::Quantized(table),
                )
            }
            // Tied, both copies: the dense table for prompts and lookups.
            Err(_) if quantizable && precision == Precision::Both => {
                let dense_table = table.dequantize(device)?;
                (
                    Embedding::Dense(candle_nn::Embedding::new(dense_table.clone(), hidden)),
                    Linear::Both {
                        dense: QMatMul::Tensor(dense_table),
                        quantized: Arc::new(for_decoding(table, qgemv::available())?),
                    },
                )
            }
            Err(_) => {
                let table = dense(table)?;
                (
                    Embedding::Dense(candle_nn::Embedding::new(table.clone(), hidden)),
                    Linear::Dense(QMatMul::Tensor(table)),
                )
            }
        };
        let norm = dense(tensor("output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let p = format!("blk.{i}");
            let mut q = |name: &str| -> anyhow::Result<Linear> {
                Ok(Linear::from_gguf(
                    tensor(&format!("{p}.{name}"))?,
                    device,
                    precision,
                )?)
            };
            let (wq, wk, wv, wo) = (
                q("attn_q.weight")?,
                q("attn_k.weight")?,
                q("attn_v.weight")?,
                q("attn_output.weight")?,
            );
            let (gate, up, down) = (
                q("ffn_gate.weight")?,
                q("ffn_up.weight")?,
                q("ffn_down.weight")?,
            );
            let bias = if arch == "qwen2" {
                Some([
                    dense(tensor(&format!("{p}.attn_q.bias"))?)?,
                    dense(tensor(&format!("{p}.attn_k.bias"))?)?,
                    dense(tensor(&format!("{p}.attn_v.bias"))?)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                bias,
                attn_norm: dense(tensor(&format!("{p}.attn_norm.weight"))?)?,
                ffn_norm: dense(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                gate,
                up,
                down,
            });
        }
        let (cos, sin) = rotary_tables(head_dim, base, context, DType::F32, device)?;
        let decoder = Self {
            embed,
            layers,
            norm,
            output,
            eps,
            heads,
            kv_heads,
            head_dim,
            cos,
            sin,
            interleaved: arch == "llama",
            precision,
            dtype: DType::F32,
            device: device.clone(),
        };
        // candle repacks Q4_K weights for its AVX2 and AVX-512 kernels when
        // they are first used: one decoding step now keeps that out of the
        // first answer (24 ms for Qwen2.5-0.5B here, where Q4_K is half of
        // the down projections; most of the weights of a larger Q4_K_M).
        if device.is_cpu() {
            let (_, prefilled) = decoder.prefill(&[0])?;
            let mut batch = Batch::default();
            batch.push(prefilled)?;
            decoder.decode(&[0], &mut batch)?;
        }
        Ok(decoder)
    }

    /// A qwen2 model from Hugging Face safetensors, with `config` as
    /// candle's qwen2 config (weights and activations in `vb`'s dtype).
    pub fn from_qwen2(
        config: &candle_transformers::models::qwen2::Config,
        vb: VarBuilder,
    ) -> anyhow::Result<Self> {
        let (hidden, heads, kv_heads) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
        );
        let head_dim = hidden / heads;
        let dense = |vb: &VarBuilder, rows: usize, cols: usize| -> anyhow::Result<Linear> {
            Ok(Linear::Dense(QMatMul::Tensor(
                vb.get((rows, cols), "weight")?,
            )))
        };
        let m = vb.pp("model");
        let embed = m
            .pp("embed_tokens")
            .get((config.vocab_size, hidden), "weight")?;
        let output = if vb.contains_tensor("lm_head.weight") {
            dense(&vb.pp("lm_head"), config.vocab_size, hidden)?
        } else {
            Linear::Dense(QMatMul::Tensor(embed.clone()))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let (a, f) = (l.pp("self_attn"), l.pp("mlp"));
            let inter = config.intermediate_size;
            layers.push(Layer {
                wq: dense(&a.pp("q_proj"), heads * head_dim, hidden)?,
                wk: dense(&a.pp("k_proj"), kv_heads * head_dim, hidden)?,
                wv: dense(&a.pp("v_proj"), kv_heads * head_dim, hidden)?,
                wo: dense(&a.pp("o_proj"), hidden, heads * head_dim)?,
                bias: Some([
                    a.pp("q_proj").get(heads * head_dim, "bias")?,
                    a.pp("k_proj").get(kv_heads * head_dim, "bias")?,
                    a.pp("v_proj").get(kv_heads * head_dim, "bias")?,
                ]),
                attn_norm: l.pp("input_layernorm").get(hidden, "weight")?,
                ffn_norm: l.pp("post_attention_layernorm").get(hidden, "weight")?,
                gate: dense(&f.pp("gate_proj"), inter, hidden)?,
                up: dense(&f.pp("up_proj"), inter, hidden)?,
                down: dense(&f.pp("down_proj"), hidden, inter)?,
            });
        }
        let (cos, sin) = rotary_tables(
            head_dim,
            config.rope_theta as f32,
            config.max_position_embeddings,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            embed: Embedding::Dense(candle_nn::Embedding::new(embed, hidden)),
            layers,
            norm: m.pp("norm").get(hidden, "weight")?,
            output,
            eps: config.rms_norm_eps as f32,
            heads,
            kv_heads,
            head_dim,
            cos,
            sin,
            interleaved: false,
            precision: Precision::Dequantized,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Runs one sequence's prompt: the logits for its next token (f32,
    /// `(vocab,)`) and its caches, ready to join a [`Batch`].
    pub fn prefill(&self, ids: &[u32]) -> candle_core::Result<(Tensor, Prefilled)> {
        self.prefill_after(None, ids)
    }

    /// [`Decoder::prefill`] of `ids` whose first `prefix.1` tokens are
    /// those `prefix.0` was prefilled with: their keys and values are taken
    /// from it, and only the rest runs through the model (at least one
    /// token). What comes out is what a prefill of all of `ids` gives, up
    /// to float rounding in attention.
    pub fn prefill_after(
        &self,
        prefix: Option<(&Prefilled, usize)>,
        ids: &[u32],
    ) -> candle_core::Result<(Tensor, Prefilled)> {
        let reused = prefix.map_or(0, |(_, p)| p);
        if reused >= ids.len() || prefix.is_some_and(|(kv, p)| p > kv.tokens) {
            candle_core::bail!(
                "a prefix of {reused} tokens leaves nothing to prefill of {}",
                ids.len()
            );
        }
        let n = ids.len() - reused;
        let input = Tensor::new(&ids[reused..], &self.device)?.unsqueeze(0)?;
        let cos = self.cos.narrow(0, reused, n)?;
        let sin = self.sin.narrow(0, reused, n)?;
        // Causal: position i (of the new tokens) sees 0..=reused + i.
        let mask = (n > 1)
            .then(|| {
                let masked: Vec<u8> = (0..n)
                    .flat_map(|i| (0..reused + n).map(move |j| u8::from(j > reused + i)))
                    .collect();
                Tensor::from_vec(masked, (1, 1, n, reused + n), &self.device)
            })
            .transpose()?;
        let mut kv = Vec::with_capacity(self.layers.len());
        let logits = self.forward(&input, &cos, &sin, mask.as_ref(), None, |layer, k, v| {
            let (k, v) = match prefix {
                Some((cached, p)) if p > 0 => {
                    let (ck, cv) = &cached.kv[layer];
                    (
                        Tensor::cat(&[&ck.narrow(2, 0, p)?, &k], 2)?,
                        Tensor::cat(&[&cv.narrow(2, 0, p)?, &v], 2)?,
                    )
                }
                _ => (k, v),
            };
            kv.push((k.clone(), v.clone()));
            Ok((k, v))
        })?;
        Ok((
            logits.squeeze(0)?,
            Prefilled {
                kv,
                tokens: ids.len(),
            },
        ))
    }

    /// [`Decoder::prefill_after`] in chunks of `chunk` tokens at fixed
    /// positions (0, `chunk`, 2 `chunk`, ...), each run on the keys and
    /// values of the ones before. A chunk's keys and values depend only on
    /// the tokens up to its end, computed by the same operations on the
    /// same shapes: so a prompt that starts from another's (`prefix`, a
    /// whole number of chunks they share) gets, to the bit, what it gets
    /// prefilled from its first token.
    pub fn prefill_chunked(
        &self,
        prefix: Option<(&Prefilled, usize)>,
        ids: &[u32],
        chunk: usize,
    ) -> candle_core::Result<(Tensor, Prefilled)> {
        let mut start = prefix.map_or(0, |(_, p)| p);
        if chunk == 0 || !start.is_multiple_of(chunk) {
            candle_core::bail!("a prefix of {start} tokens is not whole chunks of {chunk}");
        }
        let mut done: Option<Prefilled> = None;
        loop {
            let end = (start + chunk).min(ids.len());
            let before = match &done {
                Some(p) => Some((p, start)),
                None => prefix.filter(|_| start > 0),
            };
            let (logits, prefilled) = self.prefill_after(before, &ids[..end])?;
            if end == ids.len() {
                return Ok((logits, prefilled));
            }
            done = Some(prefilled);
            start = end;
        }
    }

    /// One step for every row of `batch`: `tokens[row]` goes in, the
    /// logits for each row's next token come out (f32, `(rows, vocab)`),
    /// and the caches grow by one column.
    pub fn decode(&self, tokens: &[u32], batch: &mut Batch) -> candle_core::Result<Tensor> {
        let rows = batch.rows();
        assert_eq!(tokens.len(), rows, "one token per row");
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(1)?;
        // Each row's own position: its length without the padding.
        let positions: Vec<u32> = batch
            .starts
            .iter()
            .map(|s| (batch.len - s) as u32)
            .collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&positions, 0)?.unsqueeze(1)?;
        let mask = batch
            .starts
            .iter()
            .any(|&s| s > 0)
            .then(|| {
                let columns = batch.len + 1;
                let masked: Vec<u8> = batch
                    .starts
                    .iter()
                    .flat_map(|&s| (0..columns).map(move |j| u8::from(j < s)))
                    .collect();
                Tensor::from_vec(masked, (rows, 1, 1, columns), &self.device)
            })
            .transpose()?;
        let starts = batch.starts.clone();
        let logits = self.forward(
            &input,
            &cos,
            &sin,
            mask.as_ref(),
            Some(starts.as_slice()),
            |layer, k, v| batch.append(layer, &k, &v),
        )?;
        batch.len += 1;
        Ok(logits)
    }

    /// The transformer over `input` `(rows, tokens)`; `cache(layer, k, v)`
    /// turns this pass's keys and values into the ones attended to.
    /// `step`: a decoding step, with each row's first unmasked column. Returns the last position's logits, `(rows,
    /// vocab)`, in f32.
    fn forward(
        &self,
        input: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        step: Option<&[usize]>,
        mut cache: impl FnMut(usize, Tensor, Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let (rows, n) = input.dims2()?;
        let hidden = self.heads * self.head_dim;
        // Tokens stay in one `(rows * n, hidden)` matrix between the
        // attention blocks, so each weight multiplies every row's token in
        // a single matrix product (a 3-d input would multiply the weight
        // once per row).
        let mut x = self.embed.forward(input)?.reshape((rows * n, ()))?;
        let rope = |t: &Tensor| {
            if self.interleaved {
                candle_nn::rotary_emb::rope_i(t, cos, sin)
            } else {
                candle_nn::rotary_emb::rope(t, cos, sin)
            }
        };
        let heads_of = |t: Tensor, heads: usize| {
            t.reshape((rows, n, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let group = self.heads / self.kv_heads;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, &self.device)?.to_dtype(self.dtype)?;
        let each = step.is_some();
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // Our attention for decoding steps where it runs (see
        // `decode_attention.rs`), candle's elsewhere.
        let own_attention = step.filter(|_| {
            n == 1
                && self.precision != Precision::Dequantized
                && self.dtype == DType::F32
                && self.device.is_cpu()
                && decode_attention::available(self.head_dim)
        });
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let [mut q, mut k, mut v]: [Tensor; 3] =
                Linear::forward_all(&[&layer.wq, &layer.wk, &layer.wv], &h, each)?
                    .try_into()
                    .expect("three products");
            if let Some([bq, bk, bv]) = &layer.bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = rope(&heads_of(q, self.heads)?)?;
            let k = rope(&heads_of(k, self.kv_heads)?)?;
            let (k, v) = cache(i, k, heads_of(v, self.kv_heads)?)?;
            let y = match own_attention {
                Some(starts) => decode_attention::attend(&q, &k, &v, starts, scale as f32)?,
                None => {
                    let keys = k.dim(2)?;
                    // Grouped-query attention without copying the keys and
                    // values for every head: the query heads that share a
                    // key/value head are stacked as rows of one product,
                    // `(rows, kv_heads, group * n, head_dim)`.
                    let q = q.reshape((rows, self.kv_heads, group * n, self.head_dim))?;
                    let att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
                    let mut att = att.reshape((rows, self.heads, n, keys))?;
                    if let Some(mask) = mask {
                        att = mask
                            .broadcast_as(att.shape())?
                            .where_cond(&neg_inf.broadcast_as(att.shape())?, &att)?;
                    }
                    let att = candle_nn::ops::softmax_last_dim(&att)?.reshape((
                        rows,
                        self.kv_heads,
                        group * n,
                        keys,
                    ))?;
                    att.matmul(&v)?
                        .reshape((rows, self.heads, n, self.head_dim))?
                        .transpose(1, 2)?
                        .reshape((rows * n, hidden))?
                }
            };
            x = (layer.wo.forward(&y, each)? + x)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let [gate, up]: [Tensor; 2] = Linear::forward_all(&[&layer.gate, &layer.up], &h, each)?
                .try_into()
                .expect("two products");
            let gated = (candle_nn::ops::silu(&gate)? * up)?;
            x = (layer.down.forward(&gated, each)? + x)?;
        }
        let last = x.reshape((rows, n, ()))?.narrow(1, n - 1, 1)?.squeeze(1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last, each)?.to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` by `cols` weights of `dtype`, arbitrary blocks with small
    /// positive scales.
    fn weights(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> QTensor {
        let count = rows * cols / dtype.block_size();
        // Q4_1's offsets and Q4_K's minimum scales are small too.
        let offset = matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q4K);
        let raw = crate::qgemv::tests::arbitrary_blocks(dtype.type_size(), count, offset, seed);
        let storage = QStorage::from_data(Cow::Owned(raw), &Device::Cpu, dtype).unwrap();
        QTensor::new(storage, (rows, cols)).unwrap()
    }

    /// Where Q5_0 goes to candle's Q8_0 kernels (no AVX-512 VNNI), it
    /// keeps its values exactly.
    #[test]
    fn q5_0_becomes_q8_0_with_the_same_values() {
        for seed in 1..5 {
            let q5 = weights(GgmlDType::Q5_0, 8, 96, seed);
            let expected = q5.dequantize(&Device::Cpu).unwrap();
            let bytes = q5_0_to_q8_0(&q5.data().unwrap());
            let storage =
                QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q8_0).unwrap();
            let got = QTensor::new(storage, (8, 96))
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    /// A product on the quantized weights is the dense one up to the
    /// rounding of the inputs to 8 bits, for a decoding step's rows and a
    /// prompt's alike, and in a step each row's result is the one it gets
    /// alone: on our kernels (where this CPU has AVX-512 VNNI) and on
    /// candle's.
    #[test]
    fn quantized_products_match_the_dense_ones_row_by_row() {
        let x = Tensor::randn(0f32, 1.0, (3, 96), &Device::Cpu).unwrap();
        let kernels = [qgemv::available(), false];
        for (i, (dtype, own)) in [
            GgmlDType::Q5_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
        ]
        .into_iter()
        .flat_map(|dtype| kernels.map(|own| (dtype, own)))
        .enumerate()
        {
            let seed = 7 + i as u64;
            let load = |precision| {
                Linear::from_gguf_on(weights(dtype, 48, 96, seed), &Device::Cpu, precision, own)
                    .unwrap()
            };
            let (w, dense) = (load(Precision::Quantized), load(Precision::Dequantized));
            // Both copies: a prompt on the dense one, exactly; a step on the
            // quantized one, exactly.
            let both = load(Precision::Both);
            for step in [true, false] {
                let reference = if step { &w } else { &dense };
                assert_eq!(
                    both.forward(&x, step).unwrap().to_vec2::<f32>().unwrap(),
                    reference
                        .forward(&x, step)
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap(),
                    "{dtype:?} both, step {step}"
                );
            }
            match (&w, own) {
                (Linear::Quantized(q), _) => match (q.as_ref(), own) {
                    (Quantized::Own(_), true) | (Quantized::Candle { .. }, false) => {}
                    (Quantized::Candle { .. }, true) if dtype == GgmlDType::Q4_0 => {}
                    _ => panic!("{dtype:?} is not on the kernels expected"),
                },
                _ => panic!("{dtype:?} was not kept quantized"),
            }
            let weights = match &dense {
                Linear::Dense(QMatMul::Tensor(t)) => t.to_vec2::<f32>().unwrap(),
                _ => unreachable!("dense weights"),
            };
            let expected = dense.forward(&x, false).unwrap().to_vec2::<f32>().unwrap();
            for step in [true, false] {
                let quantized = w.forward(&x, step).unwrap();
                assert_eq!(quantized.dims(), &[3, 48]);
                // Rounding the inputs to 8 bits moves each by at most half
                // a step, a step being at most the row's largest input / 127.
                let got = quantized.to_vec2::<f32>().unwrap();
                for (r, xs) in x.to_vec2::<f32>().unwrap().iter().enumerate() {
                    let step = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    for (o, row) in weights.iter().enumerate() {
                        let bound: f32 = row.iter().map(|w| w.abs() * step / 2.0).sum();
                        let error = (got[r][o] - expected[r][o]).abs();
                        assert!(
                            error <= bound * 1.001 + 1e-4,
                            "{dtype:?}: {error} > {bound}"
                        );
                    }
                }
                if step {
                    for row in 0..3 {
                        let alone = w.forward(&x.narrow(0, row, 1).unwrap(), true).unwrap();
                        assert_eq!(
                            alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                            quantized.get(row).unwrap().to_vec1::<f32>().unwrap(),
                            "{dtype:?} row {row}"
                        );
                    }
                }
            }
        }
    }

    /// Embeddings looked up in a quantized table are the dequantized rows,
    /// exactly, on our tiles and on candle's blocks; an id outside the
    /// table is an error, not a read past it.
    #[test]
    fn quantized_embeddings_are_the_dequantized_rows() {
        for (dtype, own) in [
            (GgmlDType::Q8_0, false),
            (GgmlDType::Q4K, false),
            (GgmlDType::Q5_0, true),
            (GgmlDType::Q4_1, true),
        ] {
            let (rows, cols) = (40, 256);
            let dense = weights(dtype, rows, cols, 3)
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let table = if own {
                let t = weights(dtype, rows, cols, 3);
                let format = if dtype == GgmlDType::Q5_0 {
                    Format::Q5_0
                } else {
                    Format::Q4_1
                };
                Quantized::Own(QMatrix::new(format, &t.data().unwrap(), rows, cols).unwrap())
            } else {
                Quantized::candle(weights(dtype, rows, cols, 3))
            };
            let embed = Embedding::Quantized(Arc::new(table));
            let ids = Tensor::new(&[[3u32, 39, 0], [16, 3, 17]], &Device::Cpu).unwrap();
            let got = embed.forward(&ids).unwrap();
            assert_eq!(got.dims(), &[6, cols]);
            let expected: Vec<f32> = [3, 39, 0, 16, 3, 17]
                .iter()
                .flat_map(|&i: &usize| dense[i].clone())
                .collect();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                expected,
                "{dtype:?}"
            );
            let outside = Tensor::new(&[[1u32, 40]], &Device::Cpu).unwrap();
            assert!(embed.forward(&outside).is_err(), "{dtype:?}");
        }
    }
}

/// Tests over the models themselves (`rag models fetch
/// smollm2-135m-instruct qwen2.5-coder-0.5b-instruct`).
#[cfg(test)]
mod model_tests {
    use super::*;

    fn load(rel: &str, precision: Precision) -> (Decoder, Vec<u32>) {
        let dir = std::env::var_os("RAG_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
            });
        let path = dir.join(rel);
        let mut file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("run `rag models fetch` first: {}: {e}", path.display()));
        let content = gguf_file::Content::read(&mut file).unwrap();
        let tokenizer = crate::tokenizer_from_gguf(&content).unwrap();
        let prompt = "<|im_start|>user\nEvery employee has 28 days of paid annual leave per \
                      year, and unused days carry over until March. How many vacation days \
                      do employees get?<|im_end|>\n<|im_start|>assistant\n";
        let ids = tokenizer.encode(prompt, false).unwrap().get_ids().to_vec();
        (
            Decoder::from_gguf(&content, &mut file, &Device::Cpu, precision).unwrap(),
            ids,
        )
    }

    /// The model on its quantized weights (one copy, for the prompt and the
    /// decoding steps; or for the steps only, beside a dense copy) computes what it computes on the dequantized ones,
    /// up to quantization: fed the same tokens (the dense model's greedy
    /// answer), the prompt's and every step's logits are within a few
    /// percent of the dense ones, and choose the same next token wherever
    /// the dense choice is not a near tie.
    #[test]
    fn quantized_decoding_steps_follow_the_dense_ones() {
        for (rel, precision) in [
            "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
            "Qwen2.5-Coder-0.5B-Instruct/Qwen2.5-Coder-0.5B-Instruct.gguf",
        ]
        .into_iter()
        .flat_map(|rel| [Precision::Quantized, Precision::Both].map(|p| (rel, p)))
        {
            let (quantized_model, ids) = load(rel, precision);
            let (dense_model, _) = load(rel, Precision::Dequantized);
            let run = |decoder: &Decoder, forced: Option<&[u32]>| {
                let (logits, prefilled) = decoder.prefill(&ids).unwrap();
                let mut batch = Batch::default();
                batch.push(prefilled).unwrap();
                let mut steps = vec![logits.to_vec1::<f32>().unwrap()];
                let mut tokens = Vec::new();
                for i in 0..24 {
                    let next = match forced {
                        Some(t) => t[i],
                        None => argmax(steps.last().unwrap()) as u32,
                    };
                    tokens.push(next);
                    let logits = decoder.decode(&[next], &mut batch).unwrap();
                    steps.push(logits.get(0).unwrap().to_vec1::<f32>().unwrap());
                }
                (tokens, steps)
            };
            let (tokens, dense) = run(&dense_model, None);
            let (_, quantized) = run(&quantized_model, Some(&tokens));
            let mut largest_error = 0f32;
            for (step, (d, q)) in dense.iter().zip(&quantized).enumerate() {
                let range = d.iter().fold(0f32, |m, x| m.max(x.abs()));
                let error = d.iter().zip(q).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    error < 0.1 * range,
                    "{rel} {precision:?} step {step}: logits differ by {error} (largest {range})"
                );
                let (ours, theirs) = (argmax(q), argmax(d));
                assert!(
                    ours == theirs || d[theirs] - d[ours] < 0.05 * range,
                    "{rel} {precision:?} step {step}: token {ours} instead of {theirs} ({} vs {})",
                    d[ours],
                    d[theirs]
                );
                largest_error = largest_error.max(error);
            }
            // Measured: up to 6% of the range for SmolLM2 (Q4_1 requantized
            // to Q8_0), 2% for Qwen2.5; ties within 0.5%.
            assert!(
                largest_error > 0.0,
                "{rel} {precision:?}: the quantized weights were not used"
            );
        }
    }

    /// A prompt prefilled after the keys and values of another that shares
    /// its start gives the logits, keys and values of a prefill of the
    /// whole prompt, up to float rounding in attention.
    #[test]
    fn a_prefill_after_a_shared_prefix_is_a_whole_prefill() {
        let (decoder, ids) = load(
            "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
            Precision::default(),
        );
        let shared = ids.len() - 6;
        let mut other = ids[..shared].to_vec();
        other.extend([28, 1450, 314, 253, 2]);
        let (_, cached) = decoder.prefill(&ids).unwrap();
        let (logits, after) = decoder
            .prefill_after(Some((&cached, shared)), &other)
            .unwrap();
        let (expected, whole) = decoder.prefill(&other).unwrap();
        let (got, expected) = (
            logits.to_vec1::<f32>().unwrap(),
            expected.to_vec1::<f32>().unwrap(),
        );
        let range = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let error = got
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(error <= 1e-3 * range, "logits differ by {error} of {range}");
        assert_eq!(after.tokens, other.len());
        for ((k, v), (wk, wv)) in after.kv.iter().zip(&whole.kv) {
            assert_eq!(k.dims(), wk.dims());
            let diff = (k - wk).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
            let diff = (v - wv).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
        }
        // A prefix longer than what was cached, or the whole prompt, is
        // refused rather than read past.
        assert!(
            decoder
                .prefill_after(Some((&cached, ids.len())), &ids)
                .is_err()
        );
        assert!(
            decoder
                .prefill_after(
                    Some((&cached, ids.len() + 1)),
                    &[ids.clone(), vec![1, 2]].concat()
                )
                .is_err()
        );
    }

    /// A prompt prefilled in chunks from a cache of another prompt's
    /// chunks (the ones they share) gets the logits, keys and values it
    /// gets prefilled in chunks from its first token, to the bit, with
    /// either copy of the weights; a prefix that is not whole chunks is
    /// refused.
    #[test]
    fn a_chunked_prefill_from_a_cache_is_the_cold_one_to_the_bit() {
        for precision in [Precision::Both, Precision::Quantized] {
            chunked_prefill_from_a_cache(precision);
        }
    }

    fn chunked_prefill_from_a_cache(precision: Precision) {
        let (decoder, ids) = load(
            "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
            precision,
        );
        let chunk = 8;
        assert!(ids.len() > 3 * chunk, "{} tokens", ids.len());
        let shared = 2 * chunk + 5;
        let mut other = ids[..shared].to_vec();
        other.extend([28, 1450, 314, 253, 2, 41, 77]);
        let (_, cached) = decoder.prefill_chunked(None, &ids, chunk).unwrap();
        let (warm_logits, warm) = decoder
            .prefill_chunked(Some((&cached, 2 * chunk)), &other, chunk)
            .unwrap();
        let (cold_logits, cold) = decoder.prefill_chunked(None, &other, chunk).unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&warm_logits), bits(&cold_logits));
        assert_eq!(warm.tokens, other.len());
        for ((k, v), (ck, cv)) in warm.kv.iter().zip(&cold.kv) {
            assert_eq!(bits(k), bits(ck));
            assert_eq!(bits(v), bits(cv));
        }
        assert!(
            decoder
                .prefill_chunked(Some((&cached, chunk + 1)), &other, chunk)
                .is_err()
        );
        // And the chunked prefill is a prefill: the whole one's logits up
        // to float rounding, on f32 weights. (On the quantized ones each
        // layer rounds its inputs to 8 bits, and float differences of the
        // attention over chunks move some of them by a step: a few percent
        // of the logits' range over 30 layers.)
        if precision != Precision::Both {
            return;
        }
        let (whole, _) = decoder.prefill(&other).unwrap();
        let (got, expected) = (bits(&cold_logits), whole.to_vec1::<f32>().unwrap());
        let range = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let error = got
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (a, b)| m.max((f32::from_bits(*a) - b).abs()));
        assert!(error <= 1e-3 * range, "{error} of {range}");
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    }
}
