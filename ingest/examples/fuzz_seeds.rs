//! Writes the seed corpora the fuzz targets start from:
//! `fuzz_seeds DIR` makes `DIR/<target>/<name>` for each seed of
//! `rag_ingest::fuzzing::seeds` (scripts/fuzz.sh runs it).

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    for (target, name, bytes) in rag_ingest::fuzzing::seeds() {
        let folder = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&folder).expect("make the corpus folder");
        std::fs::write(folder.join(name), bytes).expect("write a seed");
    }
}
