#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::fuzz::parquet(data));
