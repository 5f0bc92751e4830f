//! Replays the fuzz targets' seeds and every input the fuzzer found
//! (`fuzz/regressions/<target>/`), so a fixed crash, hang or unbounded
//! allocation stays fixed without running the fuzzer.

use std::path::PathBuf;

use rag_ingest::fuzzing::{TARGETS, run, seeds};

#[test]
fn seeds_pass_every_target() {
    let seeds = seeds();
    for target in TARGETS {
        let mine: Vec<_> = seeds.iter().filter(|(t, ..)| t == target).collect();
        assert!(mine.len() >= 3, "{target} has {} seeds", mine.len());
        for (_, name, bytes) in mine {
            eprintln!("{target}/{name}");
            run(target, bytes);
        }
    }
}

#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for target in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            eprintln!("{}", path.display());
            run(target, &std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} inputs");
}
