#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzz::init(), |data: &[u8]| kiln::fuzz::translate(data));
