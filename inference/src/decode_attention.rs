//! Attention for decoding steps: one new token per row against its cached
//! keys and values, with AVX-512.
//!
//! candle does it as two batched matrix products of 1 to 7 query rows (the
//! query heads that share a key/value head), a scale, a mask and a
//! softmax: eleven tensor operations per layer, and each product pays the
//! gemm crate's set-up for a matrix a few rows tall. At a 512-token context
//! that made SmolLM2 lose 42% of its short-context decoding speed, against
//! 27% for llama.cpp. Here each (row, head) is one pass over its keys and
//! one over its values, heads spread over candle's CPU threads. Masked
//! (padding) columns are skipped, so a row's result does not depend on the
//! rows beside it.

use candle_core::{Device, Result, Storage, Tensor};

use crate::qgemv::Out;

/// Lanes of an AVX-512 register.
const LANES: usize = 16;

/// Whether [`attend`] can run here, for heads of `head_dim`.
pub(crate) fn available(head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        head_dim.is_multiple_of(LANES)
            && head_dim <= 16 * LANES
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = head_dim;
        false
    }
}

/// `q` `(rows, heads, 1, head_dim)` attends over `k` and `v` `(rows,
/// kv_heads, keys, head_dim)` (f32 on the CPU, any strides but the last),
/// each row from its column `starts[row]` on; query head `h` uses key/value
/// head `h / (heads / kv_heads)`. Returns `(rows, heads * head_dim)`.
/// Call only where [`available`].
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: &[usize],
    scale: f32,
) -> Result<Tensor> {
    let (rows, heads, one, head_dim) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    assert!(one == 1 && available(head_dim) && starts.len() == rows);
    let group = heads / kv_heads;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(k_data), Storage::Cpu(v_data)) = (&*k_storage, &*v_storage) else {
        candle_core::bail!("decoding attention runs on the CPU");
    };
    let (k_data, v_data) = (k_data.as_slice::<f32>()?, v_data.as_slice::<f32>()?);
    let (ks, vs) = (k_layout.stride(), v_layout.stride());
    if ks[3] != 1 || vs[3] != 1 {
        candle_core::bail!("decoding attention needs contiguous heads");
    }
    let mut out = vec![0f32; rows * heads * head_dim];
    let dst = Out(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(rows * heads, |range| {
        let dst = &dst;
        let mut scores = Vec::with_capacity(keys);
        for i in range {
            let (r, h) = (i / heads, i % heads);
            let g = h / group;
            let k_at = k_layout.start_offset() + r * ks[0] + g * ks[1];
            let v_at = v_layout.start_offset() + r * vs[0] + g * vs[1];
            let columns = starts[r]..keys;
            let key = |j: usize| &k_data[k_at + j * ks[2]..][..head_dim];
            let value = |j: usize| &v_data[v_at + j * vs[2]..][..head_dim];
            // SAFETY: each (row, head) is one task, writing its own
            // `head_dim` values; `out` outlives the call.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(i * head_dim), head_dim) };
            let qh = &q[i * head_dim..(i + 1) * head_dim];
            // SAFETY: AVX-512F is there (`available`, asserted above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::head(qh, columns, key, value, scale, &mut scores, o)
            };
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("{:?}", (qh, columns, o.len(), scores.len()));
        }
    });
    drop((k_storage, v_storage));
    Tensor::from_vec(out, (rows, heads * head_dim), &Device::Cpu)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::LANES;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(x: &[f32]) -> __m512 {
        assert!(x.len() >= LANES);
        // SAFETY: 16 floats are there (asserted).
        unsafe { _mm512_loadu_ps(x.as_ptr()) }
    }

    /// One head: softmax(scale * q . k_j) over `columns`, times the values,
    /// into `out`.
    #[target_feature(enable = "avx512f")]
    pub fn head<'a>(
        q: &[f32],
        columns: Range<usize>,
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in columns.clone() {
            let k = key(j);
            let mut acc = _mm512_setzero_ps();
            for (a, b) in q.chunks_exact(LANES).zip(k.chunks_exact(LANES)) {
                acc = _mm512_fmadd_ps(load(a), load(b), acc);
            }
            let s = _mm512_reduce_add_ps(acc) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let mut acc = [_mm512_setzero_ps(); 16];
        let lanes = out.len() / LANES;
        for (j, p) in columns.zip(scores.iter()) {
            let p = _mm512_set1_ps(*p);
            for (l, v) in value(j).chunks_exact(LANES).enumerate().take(lanes) {
                acc[l % 16] = _mm512_fmadd_ps(p, load(v), acc[l % 16]);
            }
        }
        let inverse = _mm512_set1_ps(1.0 / sum);
        for (l, o) in out.chunks_exact_mut(LANES).enumerate() {
            // SAFETY: `o` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_mul_ps(acc[l % 16], inverse)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same as softmax(q kᵀ · scale) v with candle's operations, over
    /// cache views (narrowed, as the decoder's are), for rows that start
    /// at different columns and query heads that share key/value heads.
    #[test]
    fn attention_matches_candle_operations() {
        if !available(64) {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let dev = Device::Cpu;
        let (rows, heads, kv_heads, head_dim, keys) = (2, 6, 2, 64, 40);
        let q = Tensor::randn(0f32, 1.0, (rows, heads, 1, head_dim), &dev).unwrap();
        let cache = |seed: f64| {
            Tensor::randn(seed as f32, 1.0, (rows, kv_heads, keys + 8, head_dim), &dev)
                .unwrap()
                .narrow(2, 0, keys)
                .unwrap()
        };
        let (k, v) = (cache(0.0), cache(0.5));
        let starts = [0, 7];
        let scale = 0.125;
        let got = attend(&q, &k, &v, &starts, scale).unwrap();
        assert_eq!(got.dims(), &[rows, heads * head_dim]);
        for (r, &start) in starts.iter().enumerate() {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let at = |t: &Tensor| {
                    t.get(r)
                        .unwrap()
                        .get(g)
                        .unwrap()
                        .narrow(0, start, keys - start)
                        .unwrap()
                };
                let qh = q.get(r).unwrap().get(h).unwrap();
                let scores = (qh.matmul(&at(&k).t().unwrap()).unwrap() * f64::from(scale)).unwrap();
                let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
                let expected = p
                    .matmul(&at(&v))
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let ours = got
                    .get(r)
                    .unwrap()
                    .narrow(0, h * head_dim, head_dim)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in ours.iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-4, "row {r} head {h}: {a} vs {b}");
                }
            }
        }
    }
}
