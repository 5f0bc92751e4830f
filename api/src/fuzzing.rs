//! The upload form's fuzz target (`fuzz/fuzz_targets/multipart.rs`) and
//! its seeds, shared with the test that replays them and every input the
//! fuzzer once found (`fuzz/regressions/multipart/`). The loaders' targets
//! are `rag_ingest::fuzzing`.

use std::cell::RefCell;

use rag_ingest::Limits;

use crate::http::form;

/// The multipart boundary the target's inputs use.
pub const BOUNDARY: &str = "XB";

/// Runs one input through the form parser. Panics (which the fuzzer
/// reports) on a crash, and on a result that breaks what the server relies
/// on: file names that are paths, statuses outside the documented ones.
pub fn run(data: &[u8]) {
    run_form(data, &rag_ingest::fuzzing::limits());
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// The body is split where its first byte says, so that the parser also
/// sees a field cut across reads.
fn run_form(data: &[u8], limits: &Limits) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(body.len());
    let pieces = vec![
        Ok::<_, std::io::Error>(body[..at].to_vec()),
        Ok(body[at..].to_vec()),
    ];
    let stream = futures_util::stream::iter(pieces);
    let result = RUNTIME.with(|cell| {
        let mut cell = cell.borrow_mut();
        let runtime = cell.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime")
        });
        runtime.block_on(form::read_form(stream, BOUNDARY, limits))
    });
    match result {
        Ok(upload) => {
            for input in &upload.inputs {
                let source = input.source();
                assert!(
                    !source.contains(['/', '\\']) && source != ".." && !source.is_empty(),
                    "a file name that is a path: {source:?}"
                );
            }
            for r in &upload.rejected {
                assert!([413, 415, 422].contains(&r.status), "{r:?}");
            }
        }
        Err(e) => assert!([400, 413, 415].contains(&e.status), "{e:?}"),
    }
}

/// Seed inputs, made here rather than stored: `(name, bytes)`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let pdf = rag_ingest::fuzzing::seeds()
        .into_iter()
        .find(|(target, ..)| *target == "pdf")
        .expect("a PDF seed")
        .2;
    let loaders = rag_ingest::fuzzing::seeds();
    let text_of = |target: &str| -> Vec<String> {
        loaders
            .iter()
            .filter(|(t, ..)| *t == target)
            .map(|(.., bytes)| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    };
    let (markdown, html) = (text_of("markdown"), text_of("html"));
    let mut out: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let form = |parts: &[(&str, Option<&str>, &[u8])], split: u8| {
        let mut body = vec![split];
        for (name, file, content) in parts {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"")
                    .as_bytes(),
            );
            if let Some(file) = file {
                body.extend_from_slice(format!("; filename=\"{file}\"").as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    };
    out.push((
        "multipart",
        "mixed.bin".into(),
        form(
            &[
                ("collection", None, b"wiki"),
                ("tags", None, b"hr,travel"),
                ("groups", None, b"staff"),
                ("file", Some("notes.md"), markdown[0].as_bytes()),
                ("file", Some("page.html"), html[0].as_bytes()),
                ("file", Some("handbook.pdf"), &pdf),
                ("file", Some("tool.exe"), b"MZ"),
            ],
            40,
        ),
    ));
    out.push((
        "multipart",
        "paths.bin".into(),
        form(
            &[
                ("collection", None, b"c"),
                ("file", Some("../../etc/passwd.txt"), b"x"),
                ("file", Some("..\\win.txt"), b"y"),
                ("file", Some(".."), b"z"),
            ],
            3,
        ),
    ));
    out.push((
        "multipart",
        "unknown-field.bin".into(),
        form(&[("owner", None, b"me")], 0),
    ));
    out.into_iter()
        .map(|(_, name, bytes)| (name, bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn seeds_and_the_inputs_the_fuzzer_found_pass() {
        let seeds = super::seeds();
        assert!(seeds.len() >= 3, "{} seeds", seeds.len());
        for (name, bytes) in seeds {
            eprintln!("multipart/{name}");
            super::run(&bytes);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/multipart");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        {
            let path = entry.unwrap().path();
            eprintln!("{}", path.display());
            super::run(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "{} holds no inputs", root.display());
    }
}
