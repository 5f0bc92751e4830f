//! Writes the seed corpus of the upload form's fuzz target:
//! `form_fuzz_seeds DIR` makes `DIR/multipart/<name>` for each seed of
//! `rag_api::fuzzing::seeds` (scripts/fuzz.sh runs it; the loaders' seeds
//! come from rag-ingest's example `fuzz_seeds`).

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    let folder = std::path::Path::new(&dir).join("multipart");
    std::fs::create_dir_all(&folder).expect("make the corpus folder");
    for (name, bytes) in rag_api::fuzzing::seeds() {
        std::fs::write(folder.join(name), bytes).expect("write a seed");
    }
}
