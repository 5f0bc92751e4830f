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

/// Every target has inputs kept in its folder (a target whose folder is
/// missing or empty would replay nothing and pass): what the fuzzer found
/// once fixed, and inputs that once broke a loader or stress its limits.
#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for target in TARGETS {
        let folder = root.join(target);
        let entries =
            std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            eprintln!("{}", path.display());
            run(target, &std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "{} holds no inputs", folder.display());
    }
}
