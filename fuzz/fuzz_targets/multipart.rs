#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rag_api::fuzzing::run(data));
