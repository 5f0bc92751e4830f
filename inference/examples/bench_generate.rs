//! `bench_generate MODEL [cpu|cuda] [PROMPT_TOKENS] [MAX_TOKENS] [RUNS] [CLIENTS]`:
//! the measurement of `rag bench generate` in a small binary, for machines
//! the whole service is not carried to (a lent GPU). Prints JSON lines;
//! with CLIENTS, also that many requests at once, batched and one at a
//! time.

fn main() -> anyhow::Result<()> {
    // As `rag` does (api/src/main.rs): candle's thread count, found once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = rag_inference::candle_threads();
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().ok_or_else(|| {
        anyhow::anyhow!(
            "usage: bench_generate MODEL [cpu|cuda] [PROMPT_TOKENS] [MAX_TOKENS] [RUNS] [CLIENTS]"
        )
    })?;
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |a| Ok(a.parse()?))
    };
    let device = args
        .get(1)
        .map_or("cpu", String::as_str)
        .parse::<rag_inference::Device>()?
        .open()?;
    let (prompt_tokens, max_tokens, runs) = (arg(2, 1024)?, arg(3, 256)?, arg(4, 2)?);
    let clients = arg(5, 0)?;
    let generator = rag_inference::CandleGenerator::load_on(std::path::Path::new(model), &device)?;
    let runtime = tokio::runtime::Runtime::new()?;
    for run in runtime.block_on(rag_inference::bench::generate(
        &generator,
        prompt_tokens,
        max_tokens,
        runs,
    ))? {
        println!("{}", serde_json::to_string(&run)?);
    }
    if clients > 0 {
        for max_batch in [clients, 1] {
            let run = runtime.block_on(rag_inference::bench::concurrent(
                &generator,
                prompt_tokens,
                max_tokens,
                clients,
                max_batch,
            ))?;
            println!("{}", serde_json::to_string(&run)?);
        }
    }
    Ok(())
}
