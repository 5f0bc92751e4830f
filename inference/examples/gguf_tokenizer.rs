//! `gguf_tokenizer MODEL.gguf OUT.json`: writes the tokenizer a GGUF file
//! carries (vocabulary and merges) as a Hugging Face `tokenizer.json`, e.g.
//! for a safetensors folder of the same model family.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf, out] = args.as_slice() else {
        anyhow::bail!("usage: gguf_tokenizer MODEL.gguf OUT.json");
    };
    let mut file = std::fs::File::open(gguf)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let tokenizer = rag_inference::tokenizer_from_gguf(&content)?;
    tokenizer.save(out, false).map_err(anyhow::Error::msg)?;
    Ok(())
}
