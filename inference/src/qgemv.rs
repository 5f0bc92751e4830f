//! Matrix-vector products on GGML's Q4_1, Q5_0, Q8_0, Q4_K and Q6_K
//! weights, for decoding steps (one token: every weight is read once per
//! token, so the bytes read and the instructions per weight set the speed)
//! and, eight tokens at a time, for prompts on the one quantized copy.
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
//!
//! The K-quants' blocks of 256 are repacked the same way, block of 32 by
//! block of 32 (Q4_K's nibbles as Q4_1's, Q6_K's low nibbles too, with
//! their 2 high bits beside them), their per-32 (Q4_K) or per-16 (Q6_K)
//! integer scales unpacked to a byte per row in front of each unit of 256;
//! a tile of Q4_K takes 148 bytes per row and 256 weights, the file 144.
//! candle 0.11 has AVX-512 VNNI kernels for Q4_K decoding steps only, and
//! multiplies a prompt on Q4_K and Q6_K one token and row at a time.

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
    /// Blocks of 256: f16 `d` and `dmin`, 6-bit scales `sc` and minimums
    /// `m` per 32, 4-bit codes: `d * sc * q - dmin * m`.
    Q4K,
    /// Blocks of 256: 4 + 2-bit codes, 8-bit signed scales `sc` per 16, f16
    /// `d`: `d * sc * (q - 32)`.
    Q6K,
}

impl Format {
    /// Bytes of one GGML block.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Columns of one GGML block (a unit of a tile).
    fn columns(self) -> usize {
        match self {
            Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => BLOCK,
            Self::Q4K | Self::Q6K => K_BLOCK,
        }
    }

    /// Bytes per row of a block between the scale and the quants: Q4_1's
    /// f16 offset, Q5_0's high bits.
    fn extra_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 2,
            Self::Q5_0 => 4,
            Self::Q8_0 | Self::Q4K | Self::Q6K => 0,
        }
    }

    /// Where the quants of a tile block start: after the 16 rows' scales
    /// (at 0) and extras (at `2 * ROWS`). The K-quants: where the first
    /// block of 32 starts, after the header of their unit.
    fn quants_at(self) -> usize {
        match self {
            Self::Q4K => Q4K_HEADER,
            Self::Q6K => Q6K_HEADER,
            _ => ROWS * (2 + self.extra_bytes()),
        }
    }

    /// Bytes of one unit of a tile (a GGML block of 16 rows): scales,
    /// extras, quants. The same bytes as the file's blocks, but for Q4_K,
    /// whose 12 bytes of packed 6-bit scales take 16 here.
    fn tile_bytes(self) -> usize {
        match self {
            Self::Q4K => Q4K_HEADER + 8 * ROWS * BLOCK / 2,
            Self::Q6K => Q6K_HEADER + 8 * ROWS * (BLOCK / 2 + BLOCK / 4),
            _ => ROWS * self.block_bytes(),
        }
    }
}

/// Columns of a K-quant block.
const K_BLOCK: usize = 256;
/// A Q4_K unit of a tile starts with the 16 rows' `d` and `dmin` (f16),
/// then per block of 32 the 16 rows' scales, then their minimums (bytes);
/// 8 blocks of 32 follow, each 16 rows' nibbles as Q4_1's.
const Q4K_HEADER: usize = 4 * ROWS + 16 * ROWS;
/// A Q6_K unit starts with the 16 rows' `d` (f16), then per 16 columns the
/// 16 rows' scales (signed bytes); 8 blocks of 32 follow, each 16 rows'
/// low nibbles as Q4_1's, then their 2 high bits (see `high_bits`).
const Q6K_HEADER: usize = 2 * ROWS + 16 * ROWS;

/// Q4_K's 6-bit scale and minimum of block `j` of 32 (GGML's
/// `get_scale_min_k4`; `q`: the 12 bytes of packed scales).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One row's K-quant block: its 256 codes (Q4_K: 0..16, Q6_K: 0..64),
/// and per block of 32 its scale and minimum (Q4_K) or per 16 its scale
/// (Q6_K, in `scales`; `mins` unused), and `d` and `dmin`.
struct KBlock {
    codes: [u8; K_BLOCK],
    scales: [u8; 16],
    mins: [u8; 8],
    d: [u8; 2],
    dmin: [u8; 2],
}

impl KBlock {
    fn parse(format: Format, block: &[u8]) -> Self {
        let mut k = Self {
            codes: [0; K_BLOCK],
            scales: [0; 16],
            mins: [0; 8],
            d: [0; 2],
            dmin: [0; 2],
        };
        match format {
            Format::Q4K => {
                k.d.copy_from_slice(&block[..2]);
                k.dmin.copy_from_slice(&block[2..4]);
                for j in 0..8 {
                    (k.scales[j], k.mins[j]) = scale_min_k4(j, &block[4..16]);
                }
                // Per 64 columns, 32 bytes: low nibbles first, then high.
                for (p, qs) in block[16..].chunks_exact(32).enumerate() {
                    for (i, q) in qs.iter().enumerate() {
                        k.codes[64 * p + i] = q & 0x0f;
                        k.codes[64 * p + 32 + i] = q >> 4;
                    }
                }
            }
            Format::Q6K => {
                let (ql, qh) = (&block[..128], &block[128..192]);
                k.scales.copy_from_slice(&block[192..208]);
                k.d.copy_from_slice(&block[208..210]);
                // Per 128 columns: quarter q's 32 columns take the low
                // (q < 2) or high nibbles of 32 bytes of `ql`, and 2 bits
                // at 2q of 32 bytes of `qh`.
                for h in 0..2 {
                    for q in 0..4 {
                        for l in 0..32 {
                            let low = ql[64 * h + 32 * (q % 2) + l];
                            let low = if q < 2 { low & 0x0f } else { low >> 4 };
                            let high = (qh[32 * h + l] >> (2 * q)) & 3;
                            k.codes[128 * h + 32 * q + l] = low | high << 4;
                        }
                    }
                }
            }
            _ => unreachable!("{format:?} is not a K-quant"),
        }
        k
    }
}

/// Where row `r`'s byte of group `g` (4 columns) and column `c % 4` lies
/// among the 256 bytes of a block's nibbles: the low nibble holds column
/// `4g + k`, the high nibble column `16 + 4g + k`.
fn nibble_at(c: usize, r: usize) -> (usize, u32) {
    let (g, k) = (c % 16 / 4, c % 4);
    (64 * g + 4 * r + k, if c < 16 { 0 } else { 4 })
}

/// Q6_K's 2 high bits of column `c` of a block, row `r`, among its 128
/// bytes: in the order the kernels read the nibbles (see `avx512::dots`),
/// register `i` (columns `4(i/2)..` for even `i`, `16 + 4(i/2)..` for odd)
/// takes bits `2(i % 4)` of the 64 bytes at `64 (i / 4)`.
fn high_bits_at(c: usize, r: usize) -> (usize, u32) {
    let i = 2 * (c % 16 / 4) + c / 16;
    (64 * (i / 4) + 4 * r + c % 4, 2 * (i % 4) as u32)
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
    /// The sums of each half block (for Q6_K's -32, whose scales change
    /// every 16 columns).
    halves: Vec<f32>,
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
            halves: Vec::with_capacity(2 * blocks),
            qs: Vec::with_capacity(x.len()),
        };
        for block in x.chunks_exact(BLOCK) {
            #[cfg(target_arch = "x86_64")]
            if available() {
                let mut qs = [0i8; BLOCK];
                // SAFETY: the CPU has AVX-512 (checked above).
                let (d, low, high) = unsafe { avx512::quantize(block, &mut qs) };
                input.qs.extend_from_slice(&qs);
                input.scales.push(d);
                input.sums.push((low + high) as f32);
                input.halves.extend([low as f32, high as f32]);
                continue;
            }
            let start = input.qs.len();
            let d = quantize_block(block, &mut input.qs);
            let half = |h: usize| -> i32 {
                let qs = &input.qs[start + h * BLOCK / 2..start + (h + 1) * BLOCK / 2];
                qs.iter().map(|&q| i32::from(q)).sum()
            };
            let (low, high) = (half(0), half(1));
            input.scales.push(d);
            input.sums.push((low + high) as f32);
            input.halves.extend([low as f32, high as f32]);
        }
        input
    }

    /// `cols` zeros, as an input (what a missing token of a group is).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn zero(cols: usize) -> Self {
        Self::quantize(&vec![0f32; cols])
    }

    /// Four inputs of block `b` from column `at` on, as one little-endian
    /// word.
    fn word(&self, b: usize, at: usize) -> i32 {
        // One check of the block's bounds; the kernels' columns are
        // constants, so the word's own check folds away.
        let block: &[i8; BLOCK] = self.qs[b * BLOCK..(b + 1) * BLOCK]
            .try_into()
            .expect("a whole block");
        let q = &block[at..at + 4];
        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
    }
}

impl QMatrix {
    /// Repacks `data`, GGML's `rows * cols / 32` blocks of `format`.
    pub fn new(format: Format, data: &[u8], rows: usize, cols: usize) -> anyhow::Result<Self> {
        let (size, per) = (format.block_bytes(), format.columns());
        anyhow::ensure!(
            cols.is_multiple_of(per) && data.len() == rows * cols / per * size,
            "{rows}x{cols} {format:?} weights need {} bytes, not {}",
            rows * cols / per * size,
            data.len()
        );
        let blocks = cols / per;
        let tiles = rows.div_ceil(ROWS);
        let mut out = vec![0u8; tiles * blocks * format.tile_bytes()];
        if matches!(format, Format::Q4K | Format::Q6K) {
            for (i, unit) in out.chunks_exact_mut(format.tile_bytes()).enumerate() {
                let (t, b) = (i / blocks, i % blocks);
                for r in 0..ROWS.min(rows.saturating_sub(t * ROWS)) {
                    let row = t * ROWS + r;
                    let block = KBlock::parse(format, &data[(row * blocks + b) * size..][..size]);
                    pack_k(format, &block, r, unit);
                }
            }
            return Ok(Self {
                format,
                tiles: out,
                rows,
                cols,
            });
        }
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
}

/// Row `r`'s values in one unit of a K-quant tile, as candle dequantizes
/// them (the same operations in the same order).
fn k_row(format: Format, unit: &[u8], r: usize) -> [f32; K_BLOCK] {
    let mut out = [0f32; K_BLOCK];
    let d = f16_at(unit, 2 * r);
    for (c, o) in out.iter_mut().enumerate() {
        let (b, within) = (c / BLOCK, c % BLOCK);
        let block = &unit[format.quants_at() + b * k_block_bytes(format)..];
        let (at, shift) = nibble_at(within, r);
        let mut q = (block[at] >> shift) & 0x0f;
        match format {
            Format::Q4K => {
                let dmin = f16_at(unit, 2 * ROWS + 2 * r);
                let sc = unit[4 * ROWS + ROWS * b + r];
                let m = unit[4 * ROWS + 8 * ROWS + ROWS * b + r];
                *o = d * f32::from(sc) * f32::from(q) - dmin * f32::from(m);
            }
            _ => {
                let (at, shift) = high_bits_at(within, r);
                q |= ((block[ROWS * BLOCK / 2 + at] >> shift) & 3) << 4;
                let sc = unit[2 * ROWS + ROWS * (c / 16) + r] as i8;
                *o = d * f32::from(sc) * f32::from(q as i8 - 32);
            }
        }
    }
    out
}

impl QMatrix {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Rows `ids`, dequantized (the values candle's dequantization of the
    /// file's blocks gives), one after the other.
    pub fn rows(&self, ids: &[u32]) -> Vec<f32> {
        let blocks = self.cols / self.format.columns();
        let bytes = self.format.tile_bytes();
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let (t, r) = (id as usize / ROWS, id as usize % ROWS);
            for b in 0..blocks {
                let block = &self.tiles[(t * blocks + b) * bytes..][..bytes];
                if matches!(self.format, Format::Q4K | Format::Q6K) {
                    out.extend(k_row(self.format, block, r));
                    continue;
                }
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
                    Format::Q4K | Format::Q6K => unreachable!("above"),
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
        let inputs = quantize_all(xs, cols);
        // A prompt on AMX tiles, where asked for: per tile of 16 tokens
        // (zeros after the last token) and block of 32 columns, the 16
        // tokens' integers side by side, so that a tile loads 512
        // contiguous bytes.
        let amx = inputs.len() > MAX_INPUTS && amx_enabled();
        let packed: Vec<i8> = if amx {
            let blocks = cols / BLOCK;
            let mut packed = vec![0i8; inputs.len().next_multiple_of(AMX_TOKENS) * cols];
            for (i, x) in inputs.iter().enumerate() {
                let (group, t) = (i / AMX_TOKENS, i % AMX_TOKENS);
                for (b, block) in x.qs.chunks_exact(BLOCK).enumerate() {
                    let at = ((group * blocks + b) * AMX_TOKENS + t) * BLOCK;
                    packed[at..at + BLOCK].copy_from_slice(block);
                }
            }
            packed
        } else {
            Vec::new()
        };
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
            let kernel = kernel(m.format);
            parts.push((
                total,
                *m,
                Out(out.as_mut_ptr()),
                kernel,
                amx_kernel(m.format),
            ));
            total += m.rows.div_ceil(ROWS);
        }
        candle_core::utils::barrier_pool().execute_chunked(total, |range| {
            let mut products = vec![[0f32; ROWS]; inputs.len()];
            for i in range {
                let at = parts.partition_point(|p| p.0 <= i) - 1;
                let (first, m, dst, kernel, amx_kernel) = &parts[at];
                let t = i - first;
                let bytes = m.cols / m.format.columns() * m.format.tile_bytes();
                let tile = &m.tiles[t * bytes..(t + 1) * bytes];
                match amx_kernel {
                    // SAFETY: AMX is enabled (so supported); `packed` holds
                    // every whole group of tokens.
                    Some(amx_kernel) if amx => unsafe {
                        amx_kernel(tile, packed.as_ptr(), cols, &inputs, &mut products)
                    },
                    _ => kernel(tile, &inputs, &mut products),
                }
                {
                    for (input, p) in products.iter().enumerate() {
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

/// Bytes of one block of 32 in a K-quant unit: 16 rows' nibbles, and
/// Q6_K's high bits.
fn k_block_bytes(format: Format) -> usize {
    match format {
        Format::Q4K => ROWS * BLOCK / 2,
        _ => ROWS * (BLOCK / 2 + BLOCK / 4),
    }
}

/// Writes row `r` of a K-quant block into its tile's unit.
fn pack_k(format: Format, k: &KBlock, r: usize, unit: &mut [u8]) {
    unit[2 * r..2 * r + 2].copy_from_slice(&k.d);
    if format == Format::Q4K {
        unit[2 * ROWS + 2 * r..2 * ROWS + 2 * r + 2].copy_from_slice(&k.dmin);
        for j in 0..8 {
            unit[4 * ROWS + ROWS * j + r] = k.scales[j];
            unit[4 * ROWS + 8 * ROWS + ROWS * j + r] = k.mins[j];
        }
    } else {
        for j in 0..16 {
            unit[2 * ROWS + ROWS * j + r] = k.scales[j];
        }
    }
    let bytes = k_block_bytes(format);
    for (b, codes) in k.codes.chunks_exact(BLOCK).enumerate() {
        let block = &mut unit[format.quants_at() + b * bytes..][..bytes];
        for (c, &q) in codes.iter().enumerate() {
            let (at, shift) = nibble_at(c, r);
            block[at] |= (q & 0x0f) << shift;
            if format == Format::Q6K {
                let (at, shift) = high_bits_at(c, r);
                block[ROWS * BLOCK / 2 + at] |= (q >> 4) << shift;
            }
        }
    }
}

/// Each row of `xs` (`cols` long) rounded to 8 bits; a prompt's rows
/// on candle's threads.
fn quantize_all(xs: &[f32], cols: usize) -> Vec<Q8Input> {
    let rows = xs.len() / cols;
    if rows < 2 * MAX_INPUTS {
        return xs.chunks_exact(cols).map(Q8Input::quantize).collect();
    }
    struct Slots(*mut Option<Q8Input>);
    // SAFETY: the pool hands out disjoint ranges of rows, each slot
    // written by one thread.
    unsafe impl Sync for Slots {}
    let mut inputs: Vec<Option<Q8Input>> = (0..rows).map(|_| None).collect();
    let slots = Slots(inputs.as_mut_ptr());
    let slots = &slots;
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for i in range {
            let input = Q8Input::quantize(&xs[i * cols..(i + 1) * cols]);
            // SAFETY: slot i is this task's, and `inputs` outlives the call.
            unsafe { *slots.0.add(i) = Some(input) };
        }
    });
    inputs
        .into_iter()
        .map(|x| x.expect("every row quantized"))
        .collect()
}

/// Where parallel tasks write their results, each its own part (for
/// `gemv_many` a tile's rows, for `decode_attention` a head's values).
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: the users write disjoint parts only, each from one thread.
unsafe impl Sync for Out {}

/// Inputs one kernel call takes (its accumulators stay in registers).
const MAX_INPUTS: usize = 8;

/// One tile's blocks times any number of inputs (the SIMD kernels take
/// [`MAX_INPUTS`] at a time): per input, the 16 rows' products.
type Kernel = fn(&[u8], &[Q8Input], &mut [[f32; ROWS]]);

/// Tokens one AMX call takes.
const AMX_TOKENS: usize = 16;

/// One tile's blocks times every token, whose integers lie per group of
/// [`AMX_TOKENS`] tokens and block after block, the group's side by side
/// in each (`cols` columns).
type AmxKernel = unsafe fn(&[u8], *const i8, usize, &[Q8Input], &mut [[f32; ROWS]]);

/// Whether prompts run on AMX tiles ([`amx::set`]).
pub(crate) fn amx_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx::enabled();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn amx_kernel(format: Format) -> Option<AmxKernel> {
    #[cfg(target_arch = "x86_64")]
    if amx::enabled() {
        return Some(match format {
            Format::Q4_1 => amx::tile_q4_1,
            Format::Q5_0 => amx::tile_q5_0,
            Format::Q8_0 => amx::tile_q8_0,
            Format::Q4K => amx::tile_q4k,
            Format::Q6K => amx::tile_q6k,
        });
    }
    let _ = format;
    None
}

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
            Format::Q4K => |t, x, out| unsafe { avx512::tile_q4k(t, x, out) },
            Format::Q6K => |t, x, out| unsafe { avx512::tile_q6k(t, x, out) },
        };
    }
    portable(format)
}

fn portable(format: Format) -> Kernel {
    match format {
        Format::Q4_1 => |t, xs, out| each(t, xs, out, portable::tile_q4_1),
        Format::Q5_0 => |t, xs, out| each(t, xs, out, portable::tile_q5_0),
        Format::Q8_0 => |t, xs, out| each(t, xs, out, portable::tile_q8_0),
        Format::Q4K => |t, xs, out| each(t, xs, out, portable::tile_q4k),
        Format::Q6K => |t, xs, out| each(t, xs, out, portable::tile_q6k),
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
    // To the nearest integer, ties to even (GGML's SIMD rounding), by
    // adding and taking off 1.5 * 2^23: two additions the compiler
    // vectorizes, where `round` is a libm call per value (a fifth of the
    // time of a prompt's product on AMX). |v * inverse| <= 127 here.
    const SHIFT: f32 = 12_582_912.0;
    qs.extend(block.iter().map(|v| ((v * inverse + SHIFT) - SHIFT) as i8));
    d
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

mod portable {
    use super::{BLOCK, Format, K_BLOCK, Q8Input, ROWS, f16_at, k_row};

    /// Each row's dequantized values times the rounded input (the SIMD
    /// kernels' sums, in another order).
    fn tile_k(format: Format, tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        *out = [0.0; ROWS];
        for (u, unit) in tile.chunks_exact(format.tile_bytes()).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                let w = k_row(format, unit, r);
                for (c, w) in w.iter().enumerate() {
                    let at = u * K_BLOCK + c;
                    *o += w * x.scales[at / BLOCK] * f32::from(x.qs[at]);
                }
            }
        }
    }

    pub fn tile_q4k(tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        tile_k(Format::Q4K, tile, x, out);
    }

    pub fn tile_q6k(tile: &[u8], x: &Q8Input, out: &mut [f32; ROWS]) {
        tile_k(Format::Q6K, tile, x, out);
    }

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

    use super::{BLOCK, Format, MAX_INPUTS, Q8Input, ROWS, k_block_bytes};

    /// The formats as constants, so that each kernel is compiled for one.
    pub(super) const Q4_1: u8 = 0;
    pub(super) const Q5_0: u8 = 1;
    pub(super) const Q8_0: u8 = 2;
    pub(super) const Q4K: u8 = 3;
    pub(super) const Q6K: u8 = 4;

    pub(super) const fn format(f: u8) -> Format {
        match f {
            Q4_1 => Format::Q4_1,
            Q5_0 => Format::Q5_0,
            Q8_0 => Format::Q8_0,
            Q4K => Format::Q4K,
            _ => Format::Q6K,
        }
    }

    /// Blocks of 32 columns in `tile`.
    pub(super) fn blocks(f: u8, tile: &[u8]) -> usize {
        let format = format(f);
        tile.len() / format.tile_bytes() * (format.columns() / BLOCK)
    }

    /// `pub fn $name(tile, xs, out)`: [`vnni`] for format `$f` and as many
    /// inputs as `xs` holds (at most [`MAX_INPUTS`]), each count compiled
    /// apart so that the accumulators stay in registers.
    macro_rules! by_inputs {
        ($name:ident, $f:expr) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            pub fn $name(tile: &[u8], xs: &[Q8Input], out: &mut [[f32; ROWS]]) {
                const { assert!(MAX_INPUTS == 8) };
                if xs.len() > MAX_INPUTS {
                    return prompt::<$f>(tile, xs, out);
                }
                match xs.len() {
                    1 => vnni::<$f, 1>(tile, xs.try_into().expect("1"), out),
                    2 => vnni::<$f, 2>(tile, xs.try_into().expect("2"), out),
                    3 => vnni::<$f, 3>(tile, xs.try_into().expect("3"), out),
                    4 => vnni::<$f, 4>(tile, xs.try_into().expect("4"), out),
                    5 => vnni::<$f, 5>(tile, xs.try_into().expect("5"), out),
                    6 => vnni::<$f, 6>(tile, xs.try_into().expect("6"), out),
                    7 => vnni::<$f, 7>(tile, xs.try_into().expect("7"), out),
                    8 => vnni::<$f, 8>(tile, xs.try_into().expect("8"), out),
                    n => panic!("{n} inputs: at most {MAX_INPUTS} at a time"),
                }
            }
        };
    }

    by_inputs!(tile_q4_1, Q4_1);
    by_inputs!(tile_q5_0, Q5_0);
    by_inputs!(tile_q8_0, Q8_0);
    by_inputs!(tile_q4k, Q4K);
    by_inputs!(tile_q6k, Q6K);

    /// One tile's blocks times a prompt's tokens, 8 at a time, the blocks
    /// unpacked once for all of them: per token, the 16 rows' products.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn prompt<const F: u8>(tile: &[u8], xs: &[Q8Input], out: &mut [[f32; ROWS]]) {
        assert_eq!(xs.len(), out.len());
        let blocks: Vec<Block> = (0..blocks(F, tile)).map(|b| block::<F>(tile, b)).collect();
        let zero = Q8Input::zero(blocks.len() * BLOCK);
        for (xs, out) in xs.chunks(MAX_INPUTS).zip(out.chunks_mut(MAX_INPUTS)) {
            // A last chunk's missing tokens are zeros, computed and dropped.
            let xs: [&Q8Input; MAX_INPUTS] = std::array::from_fn(|j| xs.get(j).unwrap_or(&zero));
            let mut acc = [_mm512_setzero_ps(); MAX_INPUTS];
            for (b, block) in blocks.iter().enumerate() {
                for (x, acc) in xs.iter().zip(&mut acc) {
                    let (low, high) = split_dots(x, b, &block.w);
                    *acc = combine::<F>(block, x, b, low, high, *acc);
                }
            }
            store(out, &acc[..out.len()]);
        }
    }

    /// One tile's blocks times `N` inputs: per input, the 16 rows'
    /// products.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn vnni<const F: u8, const N: usize>(tile: &[u8], xs: &[Q8Input; N], out: &mut [[f32; ROWS]]) {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..blocks(F, tile) {
            let block = block::<F>(tile, b);
            for (x, acc) in xs.iter().zip(&mut acc) {
                let (low, high) = split_dots(x, b, &block.w);
                *acc = combine::<F>(&block, x, b, low, high, *acc);
            }
        }
        store(out, &acc);
    }

    /// One block of 32 columns of a tile, ready to multiply: its codes,
    /// unsigned, in 8 registers of 16 rows by 4 columns (columns `4i..`,
    /// AMX's layout of a right operand when read one after the other), and
    /// per row what turns a token's integer sums into its products (the
    /// format's scales and offsets).
    pub(super) struct Block {
        pub(super) w: [__m512i; 8],
        a: __m512,
        b: __m512,
    }

    /// Block `b` (of 32 columns) of `tile`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn block<const F: u8>(tile: &[u8], b: usize) -> Block {
        let mut block = unpacked::<F>(tile, b);
        if F != Q8_0 {
            // From the nibbles' order (low, high, low, ...) to the columns'.
            let w = block.w;
            block.w = [w[0], w[2], w[4], w[6], w[1], w[3], w[5], w[7]];
        }
        block
    }

    /// [`block`], the nibble formats' registers in the order of their
    /// bytes: columns `4(i/2)..` for even `i`, `16 + 4(i/2)..` for odd.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn unpacked<const F: u8>(tile: &[u8], b: usize) -> Block {
        let format = format(F);
        let zero = _mm512_setzero_ps();
        match F {
            Q4_1 => {
                let block = &tile[b * format.tile_bytes()..];
                Block {
                    w: nibbles(&block[format.quants_at()..]),
                    a: scales(block),
                    b: scales(&block[2 * ROWS..]),
                }
            }
            Q8_0 => {
                let block = &tile[b * format.tile_bytes()..];
                let bytes = &block[format.quants_at()..];
                Block {
                    w: std::array::from_fn(|g| load(&bytes[64 * g..])),
                    a: scales(block),
                    b: zero,
                }
            }
            Q5_0 => {
                let block = &tile[b * format.tile_bytes()..];
                let fifth = _mm512_set1_epi8(0x10);
                // Within each row's word of high bits: byte k of the word
                // into all four bytes of the row's lane, for k = 0..4.
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
                let high_bits = load(&block[2 * ROWS..]);
                let mut w = nibbles(&block[format.quants_at()..]);
                for (i, w) in w.iter_mut().enumerate() {
                    // Column c = 4g + j (+ 16 for odd i) has its bit in
                    // byte c / 8 of the row's word, at c % 8.
                    let g = i / 2;
                    let spread = _mm512_shuffle_epi8(high_bits, spreads[g / 2 + 2 * (i % 2)]);
                    let set = _mm512_test_epi8_mask(spread, bits[g % 2]);
                    *w = _mm512_or_si512(*w, _mm512_maskz_mov_epi8(set, fifth));
                }
                Block {
                    w,
                    a: scales(block),
                    b: zero,
                }
            }
            Q4K => {
                let (unit, j) = (&tile[b / 8 * format.tile_bytes()..], b % 8);
                let (d, dmin) = (scales(unit), scales(&unit[2 * ROWS..]));
                Block {
                    w: nibbles(&unit[format.quants_at() + j * k_block_bytes(format)..]),
                    a: _mm512_mul_ps(d, bytes_f32(&unit[4 * ROWS + ROWS * j..], false)),
                    b: _mm512_mul_ps(dmin, bytes_f32(&unit[12 * ROWS + ROWS * j..], false)),
                }
            }
            _ => {
                let (unit, j) = (&tile[b / 8 * format.tile_bytes()..], b % 8);
                let d = scales(unit);
                let two_bits = _mm512_set1_epi8(0x30);
                let block = &unit[format.quants_at() + j * k_block_bytes(format)..];
                let mut w = nibbles(block);
                // Register i's high bits: bits 2(i % 4) of the 64 bytes at
                // 64 (i / 4), moved to bits 4 and 5.
                let high = [
                    load(&block[ROWS * BLOCK / 2..]),
                    load(&block[ROWS * BLOCK / 2 + 64..]),
                ];
                for (i, w) in w.iter_mut().enumerate() {
                    let h = high[i / 4];
                    let bits = match i % 4 {
                        0 => _mm512_slli_epi16::<4>(h),
                        1 => _mm512_slli_epi16::<2>(h),
                        2 => h,
                        _ => _mm512_srli_epi16::<2>(h),
                    };
                    *w = _mm512_or_si512(*w, _mm512_and_si512(bits, two_bits));
                }
                Block {
                    w,
                    a: _mm512_mul_ps(d, bytes_f32(&unit[2 * ROWS + 2 * ROWS * j..], true)),
                    b: _mm512_mul_ps(d, bytes_f32(&unit[3 * ROWS + 2 * ROWS * j..], true)),
                }
            }
        }
    }

    /// The integer dot products of input block `b` with the block's codes
    /// `w`, over its first 16 columns and over its last 16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn split_dots(x: &Q8Input, b: usize, w: &[__m512i; 8]) -> (__m512i, __m512i) {
        let (mut low, mut high) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for g in 0..4 {
            low = _mm512_dpbusd_epi32(low, w[g], _mm512_set1_epi32(x.word(b, 4 * g)));
            high = _mm512_dpbusd_epi32(high, w[4 + g], _mm512_set1_epi32(x.word(b, 16 + 4 * g)));
        }
        (low, high)
    }

    /// `acc` plus input `x`'s products with the block (block `b` of the
    /// input), from its integer sums over the block's halves.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn combine<const F: u8>(
        block: &Block,
        x: &Q8Input,
        b: usize,
        low: __m512i,
        high: __m512i,
        acc: __m512,
    ) -> __m512 {
        let s = _mm512_set1_ps(x.scales[b]);
        let whole = || _mm512_cvtepi32_ps(_mm512_add_epi32(low, high));
        match F {
            Q4_1 => {
                let acc = _mm512_fmadd_ps(_mm512_mul_ps(block.a, s), whole(), acc);
                _mm512_fmadd_ps(block.b, _mm512_set1_ps(x.scales[b] * x.sums[b]), acc)
            }
            Q8_0 | Q5_0 => {
                // The codes are stored as q + 128 (Q8_0) or q + 16.
                let offset = if F == Q8_0 { 128.0 } else { 16.0 };
                let dots = _mm512_sub_ps(whole(), _mm512_set1_ps(offset * x.sums[b]));
                _mm512_fmadd_ps(_mm512_mul_ps(block.a, s), dots, acc)
            }
            Q4K => {
                let acc = _mm512_fmadd_ps(_mm512_mul_ps(block.a, s), whole(), acc);
                _mm512_fnmadd_ps(block.b, _mm512_set1_ps(x.scales[b] * x.sums[b]), acc)
            }
            _ => {
                // The codes are stored as q + 32.
                let low = _mm512_sub_ps(
                    _mm512_cvtepi32_ps(low),
                    _mm512_set1_ps(32.0 * x.halves[2 * b]),
                );
                let high = _mm512_sub_ps(
                    _mm512_cvtepi32_ps(high),
                    _mm512_set1_ps(32.0 * x.halves[2 * b + 1]),
                );
                let acc = _mm512_fmadd_ps(_mm512_mul_ps(block.a, s), low, acc);
                _mm512_fmadd_ps(_mm512_mul_ps(block.b, s), high, acc)
            }
        }
    }

    /// [`super::quantize_block`] for one block of 32, to the bit (the
    /// same largest magnitude, scale and rounding: `vcvtps2dq` rounds to
    /// nearest, ties to even), with the sums of its halves.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn quantize(block: &[f32], out: &mut [i8; BLOCK]) -> (f32, i32, i32) {
        assert_eq!(block.len(), BLOCK);
        // SAFETY: 32 floats (asserted).
        let (a, b) = unsafe {
            (
                _mm512_loadu_ps(block.as_ptr()),
                _mm512_loadu_ps(block.as_ptr().add(16)),
            )
        };
        let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let d = max / 127.0;
        let inverse = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
        let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
        // SAFETY: 16 bytes each, inside `out`.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qa));
            _mm_storeu_si128(out.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qb));
        }
        (d, _mm512_reduce_add_epi32(qa), _mm512_reduce_add_epi32(qb))
    }

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

    /// The 8 nibble registers of a tile block (`bytes`: its 256 bytes of
    /// nibbles), in the order of [`unpacked`].
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

    /// 16 bytes at the start of `bytes`, unsigned or signed, as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bytes_f32(bytes: &[u8], signed: bool) -> __m512 {
        assert!(bytes.len() >= 16);
        // SAFETY: 16 bytes are there (asserted).
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        _mm512_cvtepi32_ps(if signed {
            _mm512_cvtepi8_epi32(v)
        } else {
            _mm512_cvtepu8_epi32(v)
        })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn store(out: &mut [[f32; ROWS]], acc: &[__m512]) {
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` holds 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *acc) };
        }
    }
}

/// Prompts on AMX tiles (Intel's Advanced Matrix Extensions, Sapphire
/// Rapids and later), behind `use_amx`: one instruction (`tdpbsud`)
/// multiplies 16 tokens by 16 columns by 16 weight rows, where AVX-512
/// VNNI takes 16 (one per token and 4 columns). The weights are the
/// VNNI tiles' registers, stored in the layout AMX reads (4 columns of 16
/// rows side by side is its "VNNI" layout of the right operand), the
/// tokens' integers are read where they lie, and each block's sums go
/// through the VNNI kernels' own `combine`: the same integers and the same
/// float operations, so the products are the VNNI kernels' to the bit.
///
/// Written with `asm!` because Rust's AMX intrinsics and its `amx-int8`
/// feature detection are unstable (rustc 1.95).
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::avx512::{Block, Q4_1, Q4K, Q5_0, Q6K, Q8_0, block, blocks, combine, store};
    use super::{BLOCK, Q8Input, ROWS};

    /// Tokens one call takes: the rows of a tile.
    pub(crate) const TOKENS: usize = super::AMX_TOKENS;

    static WANTED: AtomicBool = AtomicBool::new(false);

    /// Whether prompts go through AMX: where asked for ([`set`]) and this
    /// CPU and kernel have it.
    pub(crate) fn enabled() -> bool {
        WANTED.load(Ordering::Relaxed) && supported()
    }

    /// Asks for AMX (or not) for this process's prompts; returns whether
    /// they will use it.
    pub fn set(on: bool) -> bool {
        WANTED.store(on, Ordering::Relaxed);
        enabled()
    }

    /// AMX-INT8 on the CPU (CPUID leaf 7: AMX-TILE and AMX-INT8), the VNNI
    /// kernels beside it, and Linux's permission to use the tiles' state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once
    /// for the whole process).
    pub(crate) fn supported() -> bool {
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            if !super::available() || !cfg!(target_os = "linux") {
                return false;
            }
            // CPUID leaf 7 exists on every CPU with AVX-512.
            let leaf = __cpuid_count(7, 0);
            if leaf.edx & (3 << 24) != 3 << 24 {
                return false;
            }
            const ARCH_PRCTL: i64 = 158;
            const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
            const XFEATURE_XTILEDATA: i64 = 18;
            let result: i64;
            // SAFETY: arch_prctl with these arguments only changes which
            // state the kernel saves for this process.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") ARCH_PRCTL => result,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            result == 0
        })
    }

    /// The tile configuration: palette 1; tmm0 and tmm1 sums (16 tokens
    /// by 16 rows, i32) of two products, tmm2 and tmm3 their tokens'
    /// integers (16 by `columns` bytes), tmm4 and tmm5 their weights'
    /// codes (`columns / 4` groups of 4 columns by 16 rows).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new(columns: u16, groups: u8) -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            let tiles: [(u16, u8); 6] = [
                (64, 16),
                (64, 16),
                (columns, 16),
                (columns, 16),
                (64, groups),
                (64, groups),
            ];
            for (t, (bytes, rows)) in tiles.into_iter().enumerate() {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&bytes.to_le_bytes());
                c[48 + t] = rows;
            }
            Self(c)
        }
    }

    #[repr(C, align(64))]
    struct Scratch<T>(T);

    /// `pub fn $name`: [`tile`] for one format.
    macro_rules! for_format {
        ($name:ident, $f:ident) => {
            /// # Safety
            /// As [`tile`].
            pub(crate) unsafe fn $name(
                t: &[u8],
                qs: *const i8,
                cols: usize,
                xs: &[Q8Input],
                out: &mut [[f32; ROWS]],
            ) {
                // SAFETY: the caller's promise.
                unsafe { tile::<$f>(t, qs, cols, xs, out) }
            }
        };
    }
    for_format!(tile_q4_1, Q4_1);
    for_format!(tile_q5_0, Q5_0);
    for_format!(tile_q8_0, Q8_0);
    for_format!(tile_q4k, Q4K);
    for_format!(tile_q6k, Q6K);

    /// One tile's blocks times every token of `xs`, whose integers lie
    /// from `qs` per group of 16 tokens (`16 * cols` bytes, zeros after
    /// the last token) and block after block, the 16 tokens' 32 bytes side
    /// by side in each: per token, the 16 rows' products. The weights are
    /// unpacked once for all the groups.
    ///
    /// # Safety
    /// [`supported`] holds; `qs` holds every group of `xs`, whole.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const F: u8>(
        tile: &[u8],
        qs: *const i8,
        cols: usize,
        xs: &[Q8Input],
        out: &mut [[f32; ROWS]],
    ) {
        assert_eq!(xs.len(), out.len());
        let blocks: Vec<Block> = (0..blocks(F, tile)).map(|b| block::<F>(tile, b)).collect();
        // Q6_K's scales change every 16 columns: its halves apart (two
        // products of 16 columns); the others a whole block at a time, two
        // blocks in flight.
        let halves = F == Q6K;
        let config = if halves {
            Config::new(16, 4)
        } else {
            Config::new(32, 8)
        };
        let mut sums = Scratch([[0i32; ROWS]; 2 * TOKENS]);
        let none = _mm512_setzero_si512();
        let zero = Q8Input::zero(cols);
        // SAFETY: the configuration is valid (palette 1, 6 tiles within
        // its limits); the tiles are released below.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
        for (g, (xs, out)) in xs.chunks(TOKENS).zip(out.chunks_mut(TOKENS)).enumerate() {
            // A last group's missing tokens are zeros: their products are
            // computed and dropped.
            let xs: [&Q8Input; TOKENS] = std::array::from_fn(|j| xs.get(j).unwrap_or(&zero));
            let group = |b: usize| {
                // SAFETY: inside the group's blocks (the caller's promise).
                unsafe { qs.add((g * blocks.len() + b) * TOKENS * BLOCK) }
            };
            let mut acc = [_mm512_setzero_ps(); TOKENS];
            let mut b = 0;
            while b < blocks.len() {
                // Block b's sums (two halves, or whole) in `sums[..16]`,
                // block b + 1's (whole, when there is one) in `sums[16..]`.
                let next = (b + 1).min(blocks.len() - 1);
                // SAFETY: the loads read the group's 512 bytes of blocks b
                // and `next` (the caller's promise) and their 512 bytes of
                // registers; the stores write the 2 KiB of `sums`.
                unsafe {
                    let (w, w2) = (blocks[b].w.as_ptr().cast::<u8>(), blocks[next].w.as_ptr());
                    let (x, x2, stride) = if halves {
                        (group(b), group(b).add(BLOCK / 2), BLOCK)
                    } else {
                        (group(b), group(next), BLOCK)
                    };
                    let w2 = if halves {
                        w.add(4 * 64)
                    } else {
                        w2.cast::<u8>()
                    };
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tileloadd tmm2, [{x} + {stride}]",
                        "tileloadd tmm4, [{w} + {sixty_four}]",
                        "tileloadd tmm3, [{x2} + {stride}]",
                        "tileloadd tmm5, [{w2} + {sixty_four}]",
                        "tdpbsud tmm0, tmm2, tmm4",
                        "tdpbsud tmm1, tmm3, tmm5",
                        "tilestored [{s} + {sixty_four}], tmm0",
                        "tilestored [{s2} + {sixty_four}], tmm1",
                        x = in(reg) x,
                        x2 = in(reg) x2,
                        stride = in(reg) stride,
                        w = in(reg) w,
                        w2 = in(reg) w2,
                        sixty_four = in(reg) 64usize,
                        s = in(reg) sums.0.as_mut_ptr(),
                        s2 = in(reg) sums.0.as_mut_ptr().add(TOKENS),
                        options(nostack),
                    );
                }
                let load = |row: usize| {
                    // SAFETY: 16 i32.
                    unsafe { _mm512_load_si512(sums.0[row].as_ptr().cast()) }
                };
                if halves {
                    for j in 0..TOKENS {
                        let (low, high) = (load(j), load(TOKENS + j));
                        acc[j] = combine::<F>(&blocks[b], xs[j], b, low, high, acc[j]);
                    }
                    b += 1;
                    continue;
                }
                for j in 0..TOKENS {
                    acc[j] = combine::<F>(&blocks[b], xs[j], b, load(j), none, acc[j]);
                }
                if next > b {
                    for j in 0..TOKENS {
                        let sums = load(TOKENS + j);
                        acc[j] = combine::<F>(&blocks[next], xs[j], next, sums, none, acc[j]);
                    }
                }
                b += 2;
            }
            store(out, &acc[..out.len()]);
        }
        // SAFETY: gives back the tiles configured above.
        unsafe { asm!("tilerelease", options(nostack)) };
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
        let count = rows * cols / format.columns();
        let offset = matches!(format, Format::Q4_1 | Format::Q4K);
        let mut data = arbitrary_blocks(format.block_bytes(), count, offset, seed);
        if format == Format::Q6K {
            // Its f16 scale is last.
            for block in data.chunks_exact_mut(210) {
                block[209] = 0x20 | (block[209] & 0x03);
            }
        }
        data
    }

    /// Every format, with candle's type and a width it takes.
    const FORMATS: [(Format, candle_core::quantized::GgmlDType, usize); 5] = {
        use candle_core::quantized::GgmlDType;
        [
            (Format::Q4_1, GgmlDType::Q4_1, 96),
            (Format::Q5_0, GgmlDType::Q5_0, 96),
            (Format::Q8_0, GgmlDType::Q8_0, 96),
            (Format::Q4K, GgmlDType::Q4K, 512),
            (Format::Q6K, GgmlDType::Q6K, 512),
        ]
    };

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
        for (format, dtype, cols) in FORMATS {
            let rows = 37;
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

    /// On AMX tiles a prompt's products are the VNNI kernels', to the bit,
    /// for every format, in whole and partial tiles of rows and of tokens.
    /// Skipped (and said) where the CPU or kernel has no AMX-INT8, unless
    /// `RAG_REQUIRE_AMX` is set.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_products_are_the_vnni_ones() {
        use candle_core::{Device, Tensor};
        if !amx::supported() {
            assert!(
                std::env::var_os("RAG_REQUIRE_AMX").is_none(),
                "RAG_REQUIRE_AMX is set but this CPU or kernel has no AMX-INT8"
            );
            eprintln!("skipped: this CPU or kernel has no AMX-INT8");
            return;
        }
        // Odd and even numbers of blocks of 32 (for Q4_1, Q5_0, Q8_0).
        for (format, cols) in FORMATS.iter().flat_map(|&(f, _, w)| [(f, w), (f, 2 * w)]) {
            let (rows, inputs) = (37, 2 * AMX_TOKENS + 5);
            let m = QMatrix::new(format, &blocks(format, rows, cols, 9), rows, cols).unwrap();
            let xs = Tensor::randn(0f32, 1.0, inputs * cols, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            amx::set(false);
            let vnni = QMatrix::gemv_many(&[&m, &m], &xs);
            assert!(amx::set(true));
            let tiles = QMatrix::gemv_many(&[&m, &m], &xs);
            amx::set(false);
            let differs = (vnni.iter().flatten())
                .zip(tiles.iter().flatten())
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(
                differs, None,
                "{format:?} {cols}: the first product that differs"
            );
        }
    }

    /// The AVX-512 rounding of the inputs is the scalar one, to the bit,
    /// with the sums of the halves (values of every magnitude, zeros).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn inputs_round_the_same_with_and_without_avx512() {
        use candle_core::{Device, Tensor};
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut xs = Tensor::randn(0f32, 1.0, 64 * BLOCK, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, block) in xs.chunks_exact_mut(BLOCK).enumerate() {
            let scale = 10f32.powi(i as i32 % 9 - 4);
            block.iter_mut().for_each(|v| *v *= scale);
        }
        xs[..BLOCK].fill(0.0);
        for block in xs.chunks_exact(BLOCK) {
            let mut scalar = Vec::new();
            let d = quantize_block(block, &mut scalar);
            let mut simd = [0i8; BLOCK];
            // SAFETY: checked above.
            let (e, low, high) = unsafe { avx512::quantize(block, &mut simd) };
            assert_eq!((d.to_bits(), &scalar[..]), (e.to_bits(), &simd[..]));
            let sum = |qs: &[i8]| qs.iter().map(|&q| i32::from(q)).sum::<i32>();
            assert_eq!((low, high), (sum(&simd[..16]), sum(&simd[16..])));
        }
    }

    /// Several inputs at once (a batched step, more than one kernel call's
    /// worth) get exactly the products each gets alone.
    #[test]
    fn inputs_together_get_what_they_get_alone() {
        use candle_core::{Device, Tensor};
        for (format, _, cols) in FORMATS {
            // More than two kernel calls' worth: the prompt path, its
            // rows rounded on several threads.
            let (rows, inputs) = (40, 2 * MAX_INPUTS + 3);
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
        use candle_core::{Device, Tensor};
        for (format, dtype, width) in FORMATS {
            for (rows, cols) in [(48, 6 * width), (37, width)] {
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
                let bytes = cols / format.columns() * format.tile_bytes();
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
