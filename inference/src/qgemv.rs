//! Matrix-vector products on GGML's Q4_1, Q5_0 and Q8_0 weights, for decoding
//! steps (one token: every weight is read once per token, so the bytes
//! read and the instructions per weight set the speed).
//!
//! Written here because candle 0.11's Q4_1 and Q5_0 dot products are scalar
//! (two thirds of a decoding step in a profile), and converting to its fast
//! Q8_0 costs 1.5 to 1.7 times the bytes, plus zero padding to 256 columns
//! for its AVX-512 kernel (a third more for SmolLM2's 576).
//!
//! The weights are repacked at load in tiles of 16 rows, with the same
//! bytes per weight as the file: for each block of 32 columns, the 16 rows'
//! scales (f16), then, per group of 4 columns, the 16 rows' 4 bytes side by
//! side, so that one AVX-512 VNNI instruction (`vpdpbusd`) multiplies 4
//! weights of 16 rows by 4 inputs (candle's repacked Q4_K and Q8_0 kernels
//! do the same). The input is quantized to 8 bits per block of 32, as GGML
//! does, and each block's integer sums are scaled once. A portable version
//! computes the same sums where AVX-512 VNNI is missing (tests; the
//! decoder uses candle's Q8_0 kernels there instead).

use half::f16;

/// Weights per block.
pub(crate) const BLOCK: usize = 32;
/// Rows per tile.
const ROWS: usize = 16;

/// The weight formats with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// f16 scale `d`, f16 offset `m`, 16 bytes of nibbles: `d * q + m`.
    Q4_1,
    /// f16 scale `d`, 32 high bits, 16 bytes of low nibbles: `d * (q - 16)`.
    Q5_0,
    /// f16 scale `d`, 32 signed bytes: `d * q` (repacked as `q + 128`).
    Q8_0,
}

impl Format {
    /// Bytes of one GGML block.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes per row of a block between the scale and the quants: Q4_1's
    /// f16 offset, Q5_0's high bits.
    fn extra_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 2,
            Self::Q5_0 => 4,
            Self::Q8_0 => 0,
        }
    }

    /// Where the quants of a tile block start: after the 16 rows' scales
    /// (at 0) and extras (at `2 * ROWS`).
    fn quants_at(self) -> usize {
        ROWS * (2 + self.extra_bytes())
    }

    /// Bytes of one block of a tile: scales, extras, quants of 16 rows.
    fn tile_bytes(self) -> usize {
        ROWS * self.block_bytes()
    }
}

/// A `(rows, cols)` weight matrix, repacked in tiles of 16 rows (rows
/// beyond the last full tile are zeros).
pub(crate) struct QMatrix {
    format: Format,
    tiles: Vec<u8>,
    rows: usize,
    cols: usize,
}

/// The input vector, 8 bits per weight: per block of 32, the scale and the
/// sum of the integers (for Q4_1's offsets and Q5_0's -16).
pub(crate) struct Q8Input {
    scales: Vec<f32>,
    sums: Vec<f32>,
    qs: Vec<i8>,
}

impl Q8Input {
    /// `x` rounded to 8 bits per block of 32 (GGML's Q8_0 and Q8_1, with
    /// f32 scales). `x.len()` is a multiple of 32.
    pub fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut input = Self {
            scales: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
            qs: Vec::with_capacity(x.len()),
        };
        for block in x.chunks_exact(BLOCK) {
            let start = input.qs.len();
            let d = quantize_block(block, &mut input.qs);
            let sum: i32 = input.qs[start..].iter().map(|&q| i32::from(q)).sum();
            input.scales.push(d);
            input.sums.push(sum as f32);
        }
        input
    }

    /// Four inputs of block `b` from column `at` on, as one little-endian
    /// word.
    fn word(&self, b: usize, at: usize) -> i32 {
        let q = &self.qs[b * BLOCK + at..b * BLOCK + at + 4];
        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
    }
}

impl QMatrix {
    /// Repacks `data`, GGML's `rows * cols / 32` blocks of `format`.
    pub fn new(format: Format, data: &[u8], rows: usize, cols: usize) -> anyhow::Result<Self> {
        let size = format.block_bytes();
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK) && data.len() == rows * cols / BLOCK * size,
            "{rows}x{cols} {format:?} weights need {} bytes, not {}",
            rows * cols / BLOCK * size,
            data.len()
        );
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(ROWS);
        let mut out = vec![0u8; tiles * blocks * format.tile_bytes()];
        for (i, tile) in out.chunks_exact_mut(format.tile_bytes()).enumerate() {
            let (t, b) = (i / blocks, i % blocks);
            // Scales, then offsets or high bits, then the 16 rows' bytes
            // in groups of 4 columns: nibbles (columns c and c + 16), or
            // Q8_0's bytes made unsigned.
            let (scales, rest) = tile.split_at_mut(2 * ROWS);
            let extra = format.extra_bytes();
            let (extras, groups) = rest.split_at_mut(extra * ROWS);
            for r in 0..ROWS {
                let row = t * ROWS + r;
                if row >= rows {
                    break;
                }
                let block = &data[(row * blocks + b) * size..][..size];
                scales[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                extras[extra * r..extra * (r + 1)].copy_from_slice(&block[2..2 + extra]);
                let qs = &block[2 + extra..];
                for g in 0..qs.len() / 4 {
                    let to = &mut groups[64 * g + 4 * r..64 * g + 4 * r + 4];
                    to.copy_from_slice(&qs[4 * g..4 * g + 4]);
                    if format == Format::Q8_0 {
                        for q in to {
                            *q ^= 0x80;
                        }
                    }
                }
            }
        }
        Ok(Self {
            format,
            tiles: out,
            rows,
            cols,
        })
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Rows `ids`, dequantized (the values candle's dequantization of the
    /// file's blocks gives), one after the other.
    pub fn rows(&self, ids: &[u32]) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let bytes = self.format.tile_bytes();
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let (t, r) = (id as usize / ROWS, id as usize % ROWS);
            for b in 0..blocks {
                let block = &self.tiles[(t * blocks + b) * bytes..][..bytes];
                let d = f16_at(block, 2 * r);
                let quants = &block[self.format.quants_at()..];
                match self.format {
                    Format::Q8_0 => out.extend((0..BLOCK).map(|c| {
                        let q = quants[64 * (c / 4) + 4 * r + c % 4] ^ 0x80;
                        d * f32::from(q as i8)
                    })),
                    Format::Q4_1 => {
                        let m = f16_at(block, 2 * ROWS + 2 * r);
                        let q = portable::weights(quants, r, 0);
                        out.extend(q.iter().map(|&q| d * q as f32 + m));
                    }
                    Format::Q5_0 => {
                        let h = &block[2 * ROWS + 4 * r..];
                        let high = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                        let q = portable::weights(quants, r, high);
                        out.extend(q.iter().map(|&q| d * (q - 16) as f32));
                    }
                }
            }
        }
        out
    }

    /// Each of `matrices` times each row of `xs` (`(inputs, cols)`, row
    /// after row; all matrices have `cols` columns): per matrix, its
    /// products `(inputs, rows)`. One rounding of the inputs and one
    /// parallel region for all of them (q, k and v; gate and up), on
    /// candle's CPU threads; each tile of weights is read once for all the
    /// inputs (a batched decoding step), and each input's products are
    /// exactly those it gets alone.
    pub fn gemv_many(matrices: &[&Self], xs: &[f32]) -> Vec<Vec<f32>> {
        let cols = matrices[0].cols;
        for m in matrices {
            assert_eq!(m.cols, cols, "input length");
        }
        assert!(xs.len().is_multiple_of(cols), "input length");
        let inputs: Vec<Q8Input> = xs.chunks_exact(cols).map(Q8Input::quantize).collect();
        let padded = |m: &Self| m.rows.div_ceil(ROWS) * ROWS;
        let mut outs: Vec<Vec<f32>> = matrices
            .iter()
            .map(|m| vec![0f32; inputs.len() * padded(m)])
            .collect();
        // Per matrix: its first tile in one numbering of all tiles, where
        // its products go, its kernel.
        let mut parts = Vec::with_capacity(matrices.len());
        let mut total = 0;
        for (m, out) in matrices.iter().zip(&mut outs) {
            parts.push((total, *m, Out(out.as_mut_ptr()), kernel(m.format)));
            total += m.rows.div_ceil(ROWS);
        }
        candle_core::utils::barrier_pool().execute_chunked(total, |range| {
            let mut products = [[0f32; ROWS]; MAX_INPUTS];
            for i in range {
                let at = parts.partition_point(|p| p.0 <= i) - 1;
                let (first, m, dst, kernel) = &parts[at];
                let t = i - first;
                let bytes = m.cols / BLOCK * m.format.tile_bytes();
                let tile = &m.tiles[t * bytes..(t + 1) * bytes];
                for (c, chunk) in inputs.chunks(MAX_INPUTS).enumerate() {
                    let products = &mut products[..chunk.len()];
                    kernel(tile, chunk, products);
                    for (j, p) in products.iter().enumerate() {
                        let input = c * MAX_INPUTS + j;
                        // SAFETY: the pool hands out disjoint ranges of
                        // tiles, each tile's rows written by one thread,
                        // and `outs` (whole tiles long) outlives the call.
                        unsafe {
                            let to = dst.0.add(input * padded(m) + t * ROWS);
                            std::ptr::copy_nonoverlapping(p.as_ptr(), to, ROWS);
                        }
                    }
                }
            }
        });
        for (out, m) in outs.iter_mut().zip(matrices) {
            let width = padded(m);
            if width != m.rows {
                for input in 0..inputs.len() {
                    out.copy_within(input * width..input * width + m.rows, input * m.rows);
                }
                out.truncate(inputs.len() * m.rows);
            }
        }
        outs
    }
}

/// Where parallel tasks write their results, each its own part (for
/// `gemv_many` a tile's rows, for `decode_attention` a head's values).
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: the users write disjoint parts only, each from one thread.
unsafe impl Sync for Out {}

/// Inputs one kernel call takes (its accumulators stay in registers).
const MAX_INPUTS: usize = 8;

/// One tile's blocks times up to [`MAX_INPUTS`] inputs: per input, the 16
/// rows' products.
type Kernel = fn(&[u8], &[Q8Input], &mut [[f32; ROWS]]);

/// Whether the AVX-512 kernels can run (the decoder uses them only then).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn kernel(format: Format) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if available() {
        return match format {
            // SAFETY: the CPU has the features (checked above).
            Format::Q4_1 => |t, x, out| unsafe { avx512::tile_q4_1(t, x, out) },
            Format::Q5_0 => |t, x, out| unsafe { avx512::tile_q5_0(t, x, out) },
            Format::Q8_0 => |t, x, out| unsafe { avx512::tile_q8_0(t, x, out) },
        };
    }
    portable(format)
}

fn portable(format: Format) -> Kernel {
    match format {
        Format::Q4_1 => |t, xs, out| each(t, xs, out, portable::tile_q4_1),
        Format::Q5_0 => |t, xs, out| each(t, xs, out, portable::tile_q5_0),
        Format::Q8_0 => |t, xs, out| each(t, xs, out, portable::tile_q8_0),
    }
}

/// `one` for each input.
fn each(
    tile: &[u8],
    xs: &[Q8Input],
    out: &mut [[f32; ROWS]],
    one: fn(&[u8], &Q8Input, &mut [f32; ROWS]),
) {
    for (x, o) in xs.iter().zip(out) {
        one(tile, x, o);
    }
}

/// One block of 32 inputs rounded to 8 bits, GGML's Q8_0 with an f32
/// scale: the integers go on `qs`, the scale is returned.
pub(crate) fn quantize_block(block: &[f32], qs: &mut Vec<i8>) -> f32 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    qs.extend(block.iter().map(|v| (v * inverse).round() as i8));
    d
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

mod portable {
    use super::{BLOCK, Format, Q8Input, ROWS, f16_at};

    /// Row `r`'s 32 unsigned weights of one tile block (`nibbles`: 256
    /// bytes, `high`: its Q5_0 bits).
    pub(super) fn weights(nibbles: &[u8], r: usize, high: u32) -> [i32; BLOCK] {
        let mut q = [0i32; BLOCK];
        for g in 0..4 {
            for j in 0..4 {
                let byte = nibbles[64 * g + 4 * r + j];
                let (lo, hi) = (4 * g + j, 16 + 4 * g + j);
                q[lo] = i32::from(byte & 0x0f) | (((high >> lo) & 1) as i32) << 4;
                q[hi] = i32::from(byte >> 4) | (((high >> hi) & 1) as i32) << 4;
            }
        }
        q
    }

    pub fn tile_q4_1(tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        *out = [0.0; ROWS];
        for (b, block) in tile.chunks_exact(Format::Q4_1.tile_bytes()).enumerate() {
            let y = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            for (r, o) in out.iter_mut().enumerate() {
                let (d, m) = (f16_at(block, 2 * r), f16_at(block, 2 * ROWS + 2 * r));
                let q = weights(&block[Format::Q4_1.quants_at()..], r, 0);
                let dot: i32 = q.iter().zip(y).map(|(a, b)| a * i32::from(*b)).sum();
                *o += d * x.scales[b] * dot as f32 + m * x.scales[b] * x.sums[b];
            }
        }
    }

    pub fn tile_q8_0(tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        *out = [0.0; ROWS];
        for (b, block) in tile.chunks_exact(Format::Q8_0.tile_bytes()).enumerate() {
            let y = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            for (r, o) in out.iter_mut().enumerate() {
                let d = f16_at(block, 2 * r);
                let mut dot = 0i32;
                for (c, y) in y.iter().enumerate() {
                    let q = block[Format::Q8_0.quants_at() + 64 * (c / 4) + 4 * r + c % 4];
                    dot += i32::from(q) * i32::from(*y);
                }
                // The weights are stored as q + 128.
                *o += d * x.scales[b] * (dot as f32 - 128.0 * x.sums[b]);
            }
        }
    }

    pub fn tile_q5_0(tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        *out = [0.0; ROWS];
        for (b, block) in tile.chunks_exact(Format::Q5_0.tile_bytes()).enumerate() {
            let y = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            for (r, o) in out.iter_mut().enumerate() {
                let d = f16_at(block, 2 * r);
                let h = &block[2 * ROWS + 4 * r..];
                let high = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let q = weights(&block[Format::Q5_0.quants_at()..], r, high);
                let dot: i32 = q.iter().zip(y).map(|(a, b)| a * i32::from(*b)).sum();
                // The weights are stored as q + 16.
                *o += d * x.scales[b] * (dot as f32 - 16.0 * x.sums[b]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Format, MAX_INPUTS, Q8Input, ROWS};

    /// 16 f16 at the start of `bytes`, as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scales(bytes: &[u8]) -> __m512 {
        assert!(bytes.len() >= 32);
        // SAFETY: 32 bytes are there (asserted).
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) })
    }

    /// 64 bytes at the start of `bytes`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(bytes: &[u8]) -> __m512i {
        assert!(bytes.len() >= 64);
        // SAFETY: 64 bytes are there (asserted).
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    }

    /// The integer dot products of one tile block's weights `w` with input
    /// block `b`, one per row, as floats. `w[i]` holds the 16 rows' weights
    /// of 4 columns: 4i.. (Q8_0), or, with `halves` (Q4_1, Q5_0), 4(i/2)..
    /// for even i and 16 + 4(i/2).. for odd i.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dots(x: &Q8Input, b: usize, w: &[__m512i; 8], halves: bool) -> __m512 {
        let mut acc = _mm512_setzero_si512();
        for (i, w) in w.iter().enumerate() {
            let column = if halves {
                4 * (i / 2) + 16 * (i % 2)
            } else {
                4 * i
            };
            acc = _mm512_dpbusd_epi32(acc, *w, _mm512_set1_epi32(x.word(b, column)));
        }
        _mm512_cvtepi32_ps(acc)
    }

    /// The 8 nibble registers of a Q4_1 or Q5_0 tile block (`bytes`: its
    /// 256 bytes of nibbles), in the order of [`dots`] with `halves`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn nibbles(bytes: &[u8]) -> [__m512i; 8] {
        let low = _mm512_set1_epi8(0x0f);
        let mut w = [_mm512_setzero_si512(); 8];
        for g in 0..4 {
            let packed = load(&bytes[64 * g..]);
            w[2 * g] = _mm512_and_si512(packed, low);
            w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
        }
        w
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(out: &mut [[f32; ROWS]], acc: &[__m512; MAX_INPUTS]) {
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` holds 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *acc) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub fn tile_q4_1(tile: &[u8], xs: &[Q8Input], out: &mut [[f32; ROWS]]) {
        assert!(xs.len() <= MAX_INPUTS);
        let mut acc = [_mm512_setzero_ps(); MAX_INPUTS];
        for (b, block) in tile.chunks_exact(Format::Q4_1.tile_bytes()).enumerate() {
            let w = nibbles(&block[Format::Q4_1.quants_at()..]);
            let (d, m) = (scales(block), scales(&block[2 * ROWS..]));
            for (x, acc) in xs.iter().zip(&mut acc) {
                let dots = dots(x, b, &w, true);
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.scales[b])), dots, *acc);
                *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(x.scales[b] * x.sums[b]), *acc);
            }
        }
        store(out, &acc);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub fn tile_q8_0(tile: &[u8], xs: &[Q8Input], out: &mut [[f32; ROWS]]) {
        assert!(xs.len() <= MAX_INPUTS);
        let mut acc = [_mm512_setzero_ps(); MAX_INPUTS];
        for (b, block) in tile.chunks_exact(Format::Q8_0.tile_bytes()).enumerate() {
            let bytes = &block[Format::Q8_0.quants_at()..];
            let w: [__m512i; 8] = std::array::from_fn(|g| load(&bytes[64 * g..]));
            let d = scales(block);
            for (x, acc) in xs.iter().zip(&mut acc) {
                // The weights are stored as q + 128.
                let dots = _mm512_sub_ps(dots(x, b, &w, false), _mm512_set1_ps(128.0 * x.sums[b]));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.scales[b])), dots, *acc);
            }
        }
        store(out, &acc);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub fn tile_q5_0(tile: &[u8], xs: &[Q8Input], out: &mut [[f32; ROWS]]) {
        assert!(xs.len() <= MAX_INPUTS);
        let fifth = _mm512_set1_epi8(0x10);
        // Within each row's word of high bits: byte k of the word into all
        // four bytes of the row's lane, for k = 0..4.
        let spread = |k: i32| {
            _mm512_set4_epi32(
                0x0c0c0c0c + k * 0x01010101,
                0x08080808 + k * 0x01010101,
                0x04040404 + k * 0x01010101,
                k * 0x01010101,
            )
        };
        let spreads = [spread(0), spread(1), spread(2), spread(3)];
        // Byte j of a lane tests bit 4 * (g % 2) + j of its byte.
        let bits = [
            _mm512_set1_epi32(0x08040201),
            _mm512_set1_epi32(0x80402010_u32 as i32),
        ];
        let mut acc = [_mm512_setzero_ps(); MAX_INPUTS];
        for (b, block) in tile.chunks_exact(Format::Q5_0.tile_bytes()).enumerate() {
            let high_bits = load(&block[2 * ROWS..]);
            let mut w = nibbles(&block[Format::Q5_0.quants_at()..]);
            for (i, w) in w.iter_mut().enumerate() {
                // Column c = 4g + j (+ 16 for odd i) has its bit in byte
                // c / 8 of the row's word, at c % 8.
                let g = i / 2;
                let spread = _mm512_shuffle_epi8(high_bits, spreads[g / 2 + 2 * (i % 2)]);
                let set = _mm512_test_epi8_mask(spread, bits[g % 2]);
                *w = _mm512_or_si512(*w, _mm512_maskz_mov_epi8(set, fifth));
            }
            let d = scales(block);
            for (x, acc) in xs.iter().zip(&mut acc) {
                // The weights are stored as q + 16.
                let dots = _mm512_sub_ps(dots(x, b, &w, true), _mm512_set1_ps(16.0 * x.sums[b]));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.scales[b])), dots, *acc);
            }
        }
        store(out, &acc);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `count` GGML blocks of `size` bytes, arbitrary but for a small
    /// positive f16 scale in the first two bytes and, with `offset` (Q4_1),
    /// the next two (0x2000-0x23ff: 0.0078 to 0.0156). An xorshift64 stream:
    /// the tests need arbitrary bytes, not a random crate.
    pub(crate) fn arbitrary_blocks(size: usize, count: usize, offset: bool, seed: u64) -> Vec<u8> {
        let mut x = seed.max(1);
        let mut data: Vec<u8> = (0..size * count)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for block in data.chunks_exact_mut(size) {
            block[1] = 0x20 | (block[1] & 0x03);
            if offset {
                block[3] = 0x20 | (block[3] & 0x03);
            }
        }
        data
    }

    fn blocks(format: Format, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let count = rows * cols / BLOCK;
        arbitrary_blocks(format.block_bytes(), count, format == Format::Q4_1, seed)
    }

    /// `data`, GGML blocks of `dtype`, as candle dequantizes them.
    fn candle_dense(
        dtype: candle_core::quantized::GgmlDType,
        data: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> candle_core::Tensor {
        use candle_core::Device;
        use candle_core::quantized::{QStorage, QTensor};
        let storage = QStorage::from_data(data.into(), &Device::Cpu, dtype).unwrap();
        QTensor::new(storage, (rows, cols))
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
    }

    /// Rows looked up in the repacked tiles are candle's dequantized rows,
    /// exactly, in whole and partial tiles.
    #[test]
    fn rows_are_the_dequantized_rows() {
        use candle_core::quantized::GgmlDType;
        for (format, dtype) in [
            (Format::Q4_1, GgmlDType::Q4_1),
            (Format::Q5_0, GgmlDType::Q5_0),
            (Format::Q8_0, GgmlDType::Q8_0),
        ] {
            let (rows, cols) = (37, 96);
            let data = blocks(format, rows, cols, 11);
            let m = QMatrix::new(format, &data, rows, cols).unwrap();
            let dense = candle_dense(dtype, data, rows, cols)
                .to_vec2::<f32>()
                .unwrap();
            let ids = [0u32, 36, 17, 16, 15, 0];
            let got = m.rows(&ids);
            let expected: Vec<f32> = ids
                .iter()
                .flat_map(|&i| dense[i as usize].clone())
                .collect();
            assert_eq!(got, expected, "{format:?}");
        }
    }

    /// Several inputs at once (a batched step, more than one kernel call's
    /// worth) get exactly the products each gets alone.
    #[test]
    fn inputs_together_get_what_they_get_alone() {
        use candle_core::{Device, Tensor};
        for format in [Format::Q4_1, Format::Q5_0, Format::Q8_0] {
            let (rows, cols, inputs) = (40, 96, MAX_INPUTS + 3);
            let m = QMatrix::new(format, &blocks(format, rows, cols, 5), rows, cols).unwrap();
            let xs = Tensor::randn(0f32, 1.0, inputs * cols, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let together = QMatrix::gemv_many(&[&m], &xs).remove(0);
            assert_eq!(together.len(), inputs * rows);
            for (i, x) in xs.chunks_exact(cols).enumerate() {
                let alone = QMatrix::gemv_many(&[&m], x).remove(0);
                assert_eq!(
                    alone,
                    together[i * rows..(i + 1) * rows],
                    "{format:?} input {i}"
                );
            }
        }
    }

    /// The product is candle's dequantized weights times the input, within
    /// what rounding the input to 8 bits can change (each input moves by
    /// at most half its block's step), for whole and partial tiles; the
    /// SIMD kernel (where the CPU has it) and the portable one agree to
    /// float rounding.
    #[test]
    fn products_match_the_dequantized_weights() {
        use candle_core::quantized::GgmlDType;
        use candle_core::{Device, Tensor};
        for (format, dtype) in [
            (Format::Q4_1, GgmlDType::Q4_1),
            (Format::Q5_0, GgmlDType::Q5_0),
            (Format::Q8_0, GgmlDType::Q8_0),
        ] {
            for (rows, cols) in [(48, 576), (37, 96)] {
                let data = blocks(format, rows, cols, 3 + rows as u64);
                let m = QMatrix::new(format, &data, rows, cols).unwrap();
                let dense = candle_dense(dtype, data, rows, cols);
                let x = Tensor::randn(0f32, 1.0, cols, &Device::Cpu).unwrap();
                let expected = dense
                    .matmul(&x.unsqueeze(1).unwrap())
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let x = x.to_vec1::<f32>().unwrap();
                let got = QMatrix::gemv_many(&[&m, &m], &x);
                assert_eq!(got[0], got[1]);
                let got = &got[0];
                assert_eq!(got.len(), rows);
                let input = Q8Input::quantize(&x);
                let dense = dense.to_vec2::<f32>().unwrap();
                for (r, (g, e)) in got.iter().zip(&expected).enumerate() {
                    let bound: f32 = dense[r]
                        .iter()
                        .enumerate()
                        .map(|(c, w)| w.abs() * input.scales[c / BLOCK] / 2.0)
                        .sum();
                    assert!(
                        (g - e).abs() <= bound * 1.001 + 1e-4,
                        "{format:?} row {r}: {g} vs {e} (bound {bound})"
                    );
                }
                let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
                let bytes = cols / BLOCK * format.tile_bytes();
                for (t, tile) in m.tiles.chunks_exact(bytes).enumerate() {
                    let mut rows_out = [0f32; ROWS];
                    portable(format)(
                        tile,
                        std::slice::from_ref(&input),
                        std::slice::from_mut(&mut rows_out),
                    );
                    for (r, p) in rows_out.iter().enumerate().take(rows - t * ROWS) {
                        let g = got[t * ROWS + r];
                        assert!(
                            (g - p).abs() <= 1e-4 * scale,
                            "{format:?} row {r}: {g} vs {p}"
                        );
                    }
                }
            }
        }
    }
}
