#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polyllm_fuzz::router_generate(data));
