//! `bench_kernels [ROWS] [COLS] [TOKENS] [RUNS]`: one prompt's product
//! with one weight matrix per format, on candle's f32 gemm and on our
//! tiles (AVX-512 VNNI, and AMX where the CPU has it), the fastest of RUNS
//! each. Prints JSON lines. Defaults: the 1.5B model's gate matrix
//! (8,960 by 1,536) and 512 tokens.

fn main() -> anyhow::Result<()> {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = rag_inference::candle_threads();
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |a| Ok(a.parse()?))
    };
    let (rows, cols, tokens, runs) = (arg(0, 8960)?, arg(1, 1536)?, arg(2, 512)?, arg(3, 5)?);
    for run in rag_inference::bench::kernels(rows, cols, tokens, runs)? {
        println!("{}", serde_json::to_string(&run)?);
    }
    Ok(())
}
