#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polyllm_fuzz::sse_parser(data));
