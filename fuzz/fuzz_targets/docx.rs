#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rag_ingest::fuzzing::run("docx", data));
