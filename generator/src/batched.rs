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

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    /// qwen2 has biases on q, k and v; llama has none.
    bias: Option<[Tensor; 3]>,
    attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// The weights and shape of one model.
pub(crate) struct Decoder {
    embed: candle_nn::Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
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
/// `(1, kv_heads, tokens, head_dim)`.
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
    /// Reads a GGUF file of the llama or qwen2 architecture (weights stay
    /// quantized; activations are f32).
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
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
        let embed = dense(tensor("token_embd.weight")?)?;
        let output = match tensor("output.weight") {
            Ok(w) => QMatMul::from_qtensor(w)?,
            // Tied to the embeddings.
            Err(_) => QMatMul::from_qtensor(tensor("token_embd.weight")?)?,
        };
        let norm = dense(tensor("output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let p = format!("blk.{i}");
            let mut q = |name: &str| -> anyhow::Result<QMatMul> {
                Ok(QMatMul::from_qtensor(tensor(&format!("{p}.{name}"))?)?)
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
        Ok(Self {
            embed: candle_nn::Embedding::new(embed, hidden),
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
            dtype: DType::F32,
            device: device.clone(),
        })
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
        let dense = |vb: &VarBuilder, rows: usize, cols: usize| -> anyhow::Result<QMatMul> {
            Ok(QMatMul::Tensor(vb.get((rows, cols), "weight")?))
        };
        let m = vb.pp("model");
        let embed = m
            .pp("embed_tokens")
            .get((config.vocab_size, hidden), "weight")?;
        let output = if vb.contains_tensor("lm_head.weight") {
            dense(&vb.pp("lm_head"), config.vocab_size, hidden)?
        } else {
            QMatMul::Tensor(embed.clone())
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
            embed: candle_nn::Embedding::new(embed, hidden),
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
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Runs one sequence's prompt: the logits for its next token (f32,
    /// `(vocab,)`) and its caches, ready to join a [`Batch`].
    pub fn prefill(&self, ids: &[u32]) -> candle_core::Result<(Tensor, Prefilled)> {
        let n = ids.len();
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let cos = self.cos.narrow(0, 0, n)?;
        let sin = self.sin.narrow(0, 0, n)?;
        // Causal: position i sees 0..=i.
        let mask = (n > 1)
            .then(|| {
                let masked: Vec<u8> = (0..n)
                    .flat_map(|i| (0..n).map(move |j| u8::from(j > i)))
                    .collect();
                Tensor::from_vec(masked, (1, 1, n, n), &self.device)
            })
            .transpose()?;
        let mut kv = Vec::with_capacity(self.layers.len());
        let logits = self.forward(&input, &cos, &sin, mask.as_ref(), |_, k, v| {
            kv.push((k.clone(), v.clone()));
            Ok((k, v))
        })?;
        Ok((logits.squeeze(0)?, Prefilled { kv, tokens: n }))
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
        let logits = self.forward(&input, &cos, &sin, mask.as_ref(), |layer, k, v| {
            batch.append(layer, &k, &v)
        })?;
        batch.len += 1;
        Ok(logits)
    }

    /// The transformer over `input` `(rows, tokens)`; `cache(layer, k, v)`
    /// turns this pass's keys and values into the ones attended to.
    /// Returns the last position's logits, `(rows, vocab)`, in f32.
    fn forward(
        &self,
        input: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
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
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let (mut q, mut k, mut v) = (
                layer.wq.forward(&h)?,
                layer.wk.forward(&h)?,
                layer.wv.forward(&h)?,
            );
            if let Some([bq, bk, bv]) = &layer.bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = rope(&heads_of(q, self.heads)?)?;
            let k = rope(&heads_of(k, self.kv_heads)?)?;
            let (k, v) = cache(i, k, heads_of(v, self.kv_heads)?)?;
            let keys = k.dim(2)?;
            // Grouped-query attention without copying the keys and values
            // for every head: the query heads that share a key/value head
            // are stacked as rows of one product, `(rows, kv_heads,
            // group * n, head_dim)`.
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
            let y = att
                .matmul(&v)?
                .reshape((rows, self.heads, n, self.head_dim))?
                .transpose(1, 2)?
                .reshape((rows * n, hidden))?;
            x = (layer.wo.forward(&y)? + x)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let gated =
                (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (layer.down.forward(&gated)? + x)?;
        }
        let last = x.reshape((rows, n, ()))?.narrow(1, n - 1, 1)?.squeeze(1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last)?.to_dtype(DType::F32)
    }
}
