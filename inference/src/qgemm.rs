//! Matrix products of a prompt's tokens with GGML's Q8_0, Q4_K and Q6_K
//! weights, on the quantized blocks themselves, for CPUs with AVX2 (on
//! AVX-512 VNNI, `qgemv.rs` and candle's repacked kernels take them).
//!
//! Written here because candle 0.11's quantized matmul multiplies a prompt
//! with the dot product of one decoding step per row and column (its tiled
//! kernels need AVX-512 VNNI), so prefill ran on a second, dequantized f32
//! copy of every weight: four to seven times the memory of the file. These
//! kernels read the weights where decoding reads them (candle's blocks), so
//! one copy serves both.
//!
//! The tokens are rounded to 8 bits per block of 32, as GGML does (and as
//! `qgemv.rs` does for a step). Each weight is an unsigned code `u` of at
//! most 7 bits with a scale and an offset per 16 or 32 weights, `s * u - o`
//! (Q4_K: `d * sc` and `dmin * m`; Q6_K: `d * sc` and `32 * d * sc`; a Q8_0
//! matrix whose integers all lie in -64..=64, as Q5_0 turned into Q8_0
//! does: `d` and `64 * d`). A tile of 4 weight rows by 2 tokens keeps its 8
//! sums in registers while the blocks go by; per block and pair,
//! `vpmaddubsw` multiplies 32 codes by 32 inputs into 16 pair sums (at most
//! 2 * 128 * 127: no saturation), `vpmaddwd` adds the pairs, and one fused
//! multiply-add scales them by the weights' scales (two halves for Q6_K)
//! times the inputs'. The offsets times the inputs' sums are taken off
//! after, per row and token. Other Q8_0 matrices take GGML's sign trick
//! (`|q|` times the input with `q`'s sign), one more instruction per block
//! and pair.

use candle_core::quantized::{GgmlDType, QTensor};

use crate::qgemv::{BLOCK, Out, f16_at, quantize_block, scale_min_k4};

/// Rows one task of the thread pool takes (their scales stay in L1/L2).
const CHUNK: usize = 16;

/// How a prompt multiplies one weight matrix here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Q8_0 whose integers all lie in -64..=64, read as `q + 64`.
    Q8_0Small,
    /// Any Q8_0, with the sign trick.
    Q8_0,
    /// Q4_K: 4-bit codes, 6-bit scales and minimums per 32.
    Q4K,
    /// Q6_K: 6-bit codes less 32, 8-bit scales per 16.
    Q6K,
}

impl Kernel {
    /// Bytes of one block of the format, and the weights it holds.
    fn block(self) -> (usize, usize) {
        match self {
            Self::Q8_0Small | Self::Q8_0 => (34, 32),
            Self::Q4K => (144, 256),
            Self::Q6K => (210, 256),
        }
    }
}

/// Whether this CPU runs these kernels.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kernel for `t`, where this CPU has one for its format.
pub(crate) fn kernel(t: &QTensor) -> Option<Kernel> {
    if !available() {
        return None;
    }
    let (_, cols) = t.shape().dims2().ok()?;
    let kernel = match t.dtype() {
        GgmlDType::Q8_0 => {
            let data = t.data().ok()?;
            let small = data
                .chunks_exact(34)
                .all(|b| b[2..].iter().all(|&q| (q as i8).unsigned_abs() <= 64));
            if small {
                Kernel::Q8_0Small
            } else {
                Kernel::Q8_0
            }
        }
        GgmlDType::Q4K => Kernel::Q4K,
        GgmlDType::Q6K => Kernel::Q6K,
        _ => return None,
    };
    cols.is_multiple_of(kernel.block().1).then_some(kernel)
}

/// A prompt's tokens rounded to 8 bits per block of 32 (GGML's Q8_0,
/// with f32 scales), once for every weight matrix they multiply.
pub(crate) struct Prompt {
    cols: usize,
    tokens: usize,
    /// Token `t`'s integers at `t * cols`.
    qs: Vec<i8>,
    /// Per token and block (`t * blocks + b`), the scale.
    scales: Vec<f32>,
    /// The same, 8 times each: loaded as a vector, which the compiler
    /// cannot turn into a scalar product and a broadcast (one more
    /// instruction per block, row and token).
    splats: Vec<[f32; 8]>,
    /// Per token and half block (`t * 2 * blocks + h`), the integers' sum
    /// times the scale: what the K-quants' offsets multiply.
    sums: Vec<f32>,
}

impl Prompt {
    /// `x` `(tokens, cols)`, row after row; `cols` a multiple of 32.
    pub(crate) fn new(x: &[f32], cols: usize) -> Self {
        assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        let tokens = x.len() / cols;
        let mut prompt = Self {
            cols,
            tokens,
            qs: Vec::with_capacity(x.len()),
            scales: Vec::with_capacity(x.len() / BLOCK),
            splats: Vec::with_capacity(x.len() / BLOCK),
            sums: Vec::with_capacity(2 * x.len() / BLOCK),
        };
        for block in x.chunks_exact(BLOCK) {
            let start = prompt.qs.len();
            let d = quantize_block(block, &mut prompt.qs);
            for half in prompt.qs[start..].chunks_exact(BLOCK / 2) {
                let sum: i32 = half.iter().map(|&q| i32::from(q)).sum();
                prompt.sums.push(sum as f32 * d);
            }
            prompt.scales.push(d);
            prompt.splats.push([d; 8]);
        }
        prompt
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }
}

/// The `prompt`'s tokens times the `(rows, cols)` weights `w` (GGML blocks
/// of the kernel's format, row after row): `(tokens, rows)`.
pub(crate) fn matmul(kernel: Kernel, w: &[u8], rows: usize, prompt: &Prompt) -> Vec<f32> {
    let (bytes, weights) = kernel.block();
    let cols = prompt.cols;
    assert!(cols.is_multiple_of(weights), "{cols} columns of {kernel:?}");
    assert_eq!(w.len(), rows * cols / weights * bytes, "weight bytes");
    assert!(available(), "AVX2 and FMA");
    let blocks = prompt.blocks();
    let mut out = vec![0f32; prompt.tokens * rows];
    let dst = Out(out.as_mut_ptr());
    let dst = &dst;
    let row_bytes = cols / weights * bytes;
    candle_core::utils::barrier_pool().execute_chunked(rows.div_ceil(CHUNK), |range| {
        for c in range {
            let first = c * CHUNK;
            let count = CHUNK.min(rows - first);
            let chunk = Chunk::new(
                kernel,
                &w[first * row_bytes..(first + count) * row_bytes],
                blocks,
            );
            let (factors, per_token) = match kernel {
                Kernel::Q8_0Small => (&prompt.scales, blocks),
                Kernel::Q8_0 => (&prompt.scales, 0),
                Kernel::Q4K | Kernel::Q6K => (&prompt.sums, 2 * blocks),
            };
            if per_token > 0 {
                for t in 0..prompt.tokens {
                    let products =
                        chunk.offsets(&factors[t * per_token..(t + 1) * per_token], per_token);
                    for (i, p) in products.iter().enumerate().take(count) {
                        // SAFETY: row `first + i` belongs to this task, and
                        // `out` (tokens by rows) outlives the call.
                        unsafe { *dst.0.add(t * rows + first + i) = -p };
                    }
                }
            }
            // SAFETY: the CPU has the features (asserted above); the task
            // adds to its own rows only.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx2::products(&chunk, prompt, first, rows, dst)
            };
        }
    });
    out
}

/// One task's rows: their bytes, and per block their scales and offsets.
struct Chunk<'a> {
    kernel: Kernel,
    weights: &'a [u8],
    rows: usize,
    row_bytes: usize,
    blocks: usize,
    /// Per block of 32 and row (`b * CHUNK + i`), what the codes' integer
    /// products are multiplied by (times the token's scale).
    scales: Vec<f32>,
    /// Q6_K: per block and row, the 16-weight sub-blocks' integer scales,
    /// 8 times each (what `vpmaddwd` multiplies the pair sums by).
    multipliers: Vec<[i16; 16]>,
    /// Per row (`f * CHUNK + i`), what each of a token's factors (its
    /// scale per block for [`Kernel::Q8_0Small`], its sum per half block
    /// for the K-quants) is multiplied by and taken off.
    offsets: Vec<f32>,
}

impl<'a> Chunk<'a> {
    fn new(kernel: Kernel, weights: &'a [u8], blocks: usize) -> Self {
        let (bytes, per_block) = kernel.block();
        let row_bytes = blocks * BLOCK / per_block * bytes;
        let rows = weights.len() / row_bytes;
        let mut scales = vec![0f32; blocks * CHUNK];
        let mut multipliers = Vec::new();
        let factors = match kernel {
            Kernel::Q8_0Small => blocks,
            Kernel::Q8_0 => 0,
            Kernel::Q4K | Kernel::Q6K => 2 * blocks,
        };
        let mut offsets = vec![0f32; factors * CHUNK];
        if kernel == Kernel::Q6K {
            multipliers = vec![[0i16; 16]; blocks * CHUNK];
        }
        for i in 0..rows {
            let row = &weights[i * row_bytes..(i + 1) * row_bytes];
            for b in 0..blocks {
                let at = b * CHUNK + i;
                match kernel {
                    Kernel::Q8_0Small => {
                        // The tokens' integers go in as unsigned, `x + 128`:
                        // take 128 times the weights' sum off.
                        let d = f16_at(row, b * 34);
                        let sum: i32 = row[b * 34 + 2..b * 34 + 34]
                            .iter()
                            .map(|&q| i32::from(q as i8))
                            .sum();
                        scales[at] = d;
                        offsets[at] = 128.0 * d * sum as f32;
                    }
                    Kernel::Q8_0 => scales[at] = f16_at(row, b * 34),
                    Kernel::Q4K => {
                        let block = &row[b / 8 * 144..];
                        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                        let (sc, m) = scale_min_k4(b % 8, &block[4..16]);
                        let (sc, m) = (f32::from(sc), f32::from(m));
                        scales[at] = d * sc;
                        offsets[2 * b * CHUNK + i] = dmin * m;
                        offsets[(2 * b + 1) * CHUNK + i] = dmin * m;
                    }
                    Kernel::Q6K => {
                        let block = &row[b / 8 * 210..];
                        let d = f16_at(block, 208);
                        let (h, k) = (b % 8 / 4, b % 4);
                        let sc = |n: usize| block[192 + 8 * h + 2 * k + n] as i8;
                        scales[at] = d;
                        let mut m = [i16::from(sc(0)); 16];
                        m[8..].fill(i16::from(sc(1)));
                        multipliers[at] = m;
                        offsets[2 * b * CHUNK + i] = 32.0 * d * f32::from(sc(0));
                        offsets[(2 * b + 1) * CHUNK + i] = 32.0 * d * f32::from(sc(1));
                    }
                }
            }
        }
        Self {
            kernel,
            weights,
            rows,
            row_bytes,
            blocks,
            scales,
            multipliers,
            offsets,
        }
    }

    /// Per row, the offsets times one token's `factors`.
    fn offsets(&self, factors: &[f32], count: usize) -> [f32; CHUNK] {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` asserted the features; `count` factors, and
        // `CHUNK` offsets per factor.
        unsafe {
            avx2::offsets(&self.offsets, &factors[..count])
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no kernels on {}", std::env::consts::ARCH)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, CHUNK, Chunk, Kernel, Prompt};
    use crate::qgemv::Out;

    /// Weight rows per tile.
    const RM: usize = 4;
    /// Tokens per tile.
    const RN: usize = 2;

    /// The kernels as constants, so that each tile is compiled for one.
    const SMALL: u8 = 0;
    const SIGNED: u8 = 1;
    const Q4K: u8 = 2;
    const Q6K: u8 = 3;

    /// Adds the chunk's rows (from row `first`) times every token to `dst`
    /// `(tokens, rows)`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `dst` holds `prompt.tokens * rows` floats
    /// and no other thread writes the chunk's rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn products(
        chunk: &Chunk,
        prompt: &Prompt,
        first: usize,
        rows: usize,
        dst: &Out,
    ) {
        macro_rules! tile {
            ($m:literal, $n:literal, $r:expr, $t:expr) => {
                // SAFETY: the tile's rows and tokens are inside the chunk
                // and the prompt; its outputs inside `dst`.
                unsafe {
                    match chunk.kernel {
                        Kernel::Q8_0Small => {
                            tile::<$m, $n, SMALL>(chunk, $r, prompt, $t, first, rows, dst)
                        }
                        Kernel::Q8_0 => {
                            tile::<$m, $n, SIGNED>(chunk, $r, prompt, $t, first, rows, dst)
                        }
                        Kernel::Q4K => tile::<$m, $n, Q4K>(chunk, $r, prompt, $t, first, rows, dst),
                        Kernel::Q6K => tile::<$m, $n, Q6K>(chunk, $r, prompt, $t, first, rows, dst),
                    }
                }
            };
        }
        let mut t = 0;
        while t < prompt.tokens {
            let n = RN.min(prompt.tokens - t);
            let mut r = 0;
            while r < chunk.rows {
                let m = RM.min(chunk.rows - r);
                match (m, n) {
                    (4, 2) => tile!(4, 2, r, t),
                    (3, 2) => tile!(3, 2, r, t),
                    (2, 2) => tile!(2, 2, r, t),
                    (1, 2) => tile!(1, 2, r, t),
                    (4, _) => tile!(4, 1, r, t),
                    (3, _) => tile!(3, 1, r, t),
                    (2, _) => tile!(2, 1, r, t),
                    _ => tile!(1, 1, r, t),
                }
                r += m;
            }
            t += n;
        }
    }

    /// Per row of a chunk, `offsets` (`CHUNK` per factor) times `factors`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn offsets(offsets: &[f32], factors: &[f32]) -> [f32; CHUNK] {
        const { assert!(CHUNK == 16) };
        assert!(offsets.len() >= factors.len() * CHUNK);
        let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (f, &s) in factors.iter().enumerate() {
            let s = _mm256_set1_ps(s);
            // SAFETY: 16 floats at f * CHUNK (asserted above).
            unsafe {
                let o = offsets.as_ptr().add(f * CHUNK);
                low = _mm256_fmadd_ps(_mm256_loadu_ps(o), s, low);
                high = _mm256_fmadd_ps(_mm256_loadu_ps(o.add(8)), s, high);
            }
        }
        let mut out = [0f32; CHUNK];
        // SAFETY: 16 floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), low);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), high);
        }
        out
    }

    /// The sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The 32 codes of block `b` of the row at `row` (signed integers for
    /// [`Kernel::Q8_0`] and [`Kernel::Q8_0Small`], unsigned codes for the
    /// K-quants).
    ///
    /// # Safety
    /// `row` points at a whole row of the kernel's blocks, `b` one of its
    /// blocks of 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes<const K: u8>(row: *const u8, b: usize) -> __m256i {
        let low = _mm256_set1_epi8(0x0f);
        // SAFETY: every load below is 32 bytes inside block `b`'s
        // (super-)block of the row.
        unsafe {
            macro_rules! load {
                ($at:expr) => {
                    _mm256_loadu_si256(row.add($at).cast())
                };
            }
            match K {
                SIGNED | SMALL => load!(b * 34 + 2),
                Q4K => {
                    // Sub-block j: the low (even j) or high nibbles of the
                    // 32 bytes of pair j / 2.
                    let (block, j) = (b / 8 * 144, b % 8);
                    let v = load!(block + 16 + 32 * (j / 2));
                    if j % 2 == 0 {
                        _mm256_and_si256(v, low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), low)
                    }
                }
                _ => {
                    // Q6_K. Quarter k of half h: low 4 bits from `ql` (low
                    // nibbles for k < 2), 2 high bits from `qh` at 2k.
                    let (block, j) = (b / 8 * 210, b % 8);
                    let (h, k) = (j / 4, j % 4);
                    let v = load!(block + 64 * h + 32 * (k % 2));
                    let nibbles = if k < 2 {
                        _mm256_and_si256(v, low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), low)
                    };
                    let high = load!(block + 128 + 32 * h);
                    let shift = _mm_cvtsi32_si128(2 * k as i32);
                    let bits = _mm256_and_si256(_mm256_srl_epi16(high, shift), _mm256_set1_epi8(3));
                    _mm256_or_si256(nibbles, _mm256_slli_epi16(bits, 4))
                }
            }
        }
    }

    /// Adds `M` rows of `chunk` from row `r` times `N` tokens from token
    /// `t`, without the offsets, to `dst`.
    ///
    /// # Safety
    /// As [`products`]; the rows and tokens exist.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const M: usize, const N: usize, const K: u8>(
        chunk: &Chunk,
        r: usize,
        prompt: &Prompt,
        t: usize,
        first: usize,
        rows: usize,
        dst: &Out,
    ) {
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let blocks = chunk.blocks;
        let mut row = [std::ptr::null::<u8>(); M];
        for (i, row) in row.iter_mut().enumerate() {
            // SAFETY: row r + i is in the chunk.
            *row = unsafe { chunk.weights.as_ptr().add((r + i) * chunk.row_bytes) };
        }
        let mut qs = [std::ptr::null::<i8>(); N];
        let mut dx = [std::ptr::null::<[f32; 8]>(); N];
        for j in 0..N {
            // SAFETY: token t + j is in the prompt.
            unsafe {
                qs[j] = prompt.qs.as_ptr().add((t + j) * prompt.cols);
                dx[j] = prompt.splats.as_ptr().add((t + j) * blocks);
            }
        }
        let scales = chunk.scales.as_ptr();
        let multipliers = chunk.multipliers.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        for b in 0..blocks {
            // Plain loops, not `array::from_fn`: a closure would not
            // inherit this function's target features (nor be inlined).
            // SAFETY: block b of the rows and tokens; the scales per block
            // and row of the chunk.
            unsafe {
                let mut y = [_mm256_setzero_si256(); N];
                let mut sx = [_mm256_setzero_ps(); N];
                for j in 0..N {
                    y[j] = _mm256_loadu_si256(qs[j].add(b * BLOCK).cast());
                    if K == SMALL {
                        // x + 128, unsigned.
                        y[j] = _mm256_xor_si256(y[j], flip);
                    }
                    sx[j] = _mm256_loadu_ps(dx[j].add(b).cast());
                }
                for i in 0..M {
                    let w = codes::<K>(row[i], b);
                    let sw = _mm256_broadcast_ss(&*scales.add(b * CHUNK + r + i));
                    let multiplier = if K == Q6K {
                        _mm256_loadu_si256(multipliers.add(b * CHUNK + r + i).cast())
                    } else {
                        ones
                    };
                    let magnitude = if K == SIGNED {
                        _mm256_sign_epi8(w, w)
                    } else {
                        w
                    };
                    for j in 0..N {
                        let pairs = match K {
                            // The sign trick: |q| times the input with q's sign.
                            SIGNED => _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(y[j], w)),
                            SMALL => _mm256_maddubs_epi16(y[j], w),
                            _ => _mm256_maddubs_epi16(w, y[j]),
                        };
                        let dot = _mm256_madd_epi16(pairs, multiplier);
                        acc[i][j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(dot),
                            _mm256_mul_ps(sw, sx[j]),
                            acc[i][j],
                        );
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &acc) in acc.iter().enumerate() {
                // SAFETY: row first + r + i is this task's; token t + j and
                // the row are inside `dst`.
                unsafe { *dst.0.add((t + j) * rows + first + r + i) += sum(acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// `rows * cols` weights of `dtype`: arbitrary blocks with small
    /// positive scales; Q8_0's integers within `-limit..=limit`.
    fn weights(dtype: GgmlDType, rows: usize, cols: usize, limit: i32, seed: u64) -> QTensor {
        let (size, per) = (dtype.type_size(), dtype.block_size());
        let q4k = dtype == GgmlDType::Q4K;
        let mut data = crate::qgemv::tests::arbitrary_blocks(size, rows * cols / per, q4k, seed);
        for block in data.chunks_exact_mut(size) {
            match dtype {
                GgmlDType::Q8_0 => {
                    for q in &mut block[2..] {
                        *q = (i32::from(*q as i8).clamp(-127, 127) % (limit + 1)) as i8 as u8;
                    }
                }
                // The f16 scale is last.
                GgmlDType::Q6K => block[209] = 0x20 | (block[209] & 0x03),
                _ => {}
            }
        }
        let storage = QStorage::from_data(data.into(), &Device::Cpu, dtype).unwrap();
        QTensor::new(storage, (rows, cols)).unwrap()
    }

    /// The product is candle's dequantized weights times the tokens,
    /// within what rounding the tokens to 8 bits can change (each input
    /// moves by at most half its block's step), for every kernel, whole and
    /// partial tiles and chunks, odd numbers of tokens; and each token gets
    /// exactly what it gets alone.
    #[test]
    fn products_match_the_dequantized_weights() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for (dtype, limit, expected_kernel) in [
            (GgmlDType::Q8_0, 64, Kernel::Q8_0Small),
            (GgmlDType::Q8_0, 127, Kernel::Q8_0),
            (GgmlDType::Q4K, 0, Kernel::Q4K),
            (GgmlDType::Q6K, 0, Kernel::Q6K),
        ] {
            for (rows, cols, tokens) in [(48, 512, 5), (37, 256, 3), (16, 256, 1)] {
                let t = weights(dtype, rows, cols, limit, rows as u64 + limit as u64);
                let kernel = super::kernel(&t).unwrap();
                assert_eq!(kernel, expected_kernel);
                let data = t.data().unwrap().into_owned();
                let dense = t.dequantize(&Device::Cpu).unwrap();
                let x = Tensor::randn(0f32, 1.0, (tokens, cols), &Device::Cpu).unwrap();
                let expected = x
                    .matmul(&dense.t().unwrap())
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let prompt = Prompt::new(&xs, cols);
                let got = matmul(kernel, &data, rows, &prompt);
                assert_eq!(got.len(), tokens * rows);
                let dense = dense.to_vec2::<f32>().unwrap();
                for (j, token) in xs.chunks_exact(cols).enumerate() {
                    let scales = &prompt.scales[j * cols / BLOCK..(j + 1) * cols / BLOCK];
                    let alone = matmul(kernel, &data, rows, &Prompt::new(token, cols));
                    assert_eq!(alone, got[j * rows..(j + 1) * rows], "{kernel:?} token {j}");
                    for r in 0..rows {
                        // Rounding the inputs, and float rounding (1e-5 of
                        // the products' magnitudes).
                        let bound: f32 = dense[r]
                            .iter()
                            .zip(token)
                            .enumerate()
                            .map(|(c, (w, x))| w.abs() * (scales[c / BLOCK] / 2.0 + 1e-5 * x.abs()))
                            .sum();
                        let (g, e) = (got[j * rows + r], expected[j][r]);
                        assert!(
                            (g - e).abs() <= bound + 1e-6,
                            "{kernel:?} {rows}x{cols} token {j} row {r}: {g} vs {e} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    /// Other formats, and columns that do not fill a K-quant's block, have
    /// no kernel here.
    #[test]
    fn other_formats_have_no_kernel() {
        let t = weights(GgmlDType::Q4_0, 16, 256, 0, 1);
        assert_eq!(kernel(&t), None);
    }
}
