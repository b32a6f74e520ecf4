//! The fuzz smoke that runs with the tests: every input saved under `fuzz/corpus/<target>/` (seeds,
//! and what `cargo fuzz` found and kept) through its harness. A crash found by fuzzing is fixed,
//! then its input is added here so it stays fixed.
use std::path::Path;

#[test]
fn every_saved_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, harness) in polyllm_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{name}: only {} saved inputs", files.len());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            // A panic names the input that caused it.
            let r = std::panic::catch_unwind(|| harness(&data));
            assert!(r.is_ok(), "{name} failed on {}", f.display());
        }
        println!("{name}: {} inputs", files.len());
    }
}

#[test]
fn the_harnesses_catch_what_they_check() {
    // A harness that could not fail would prove nothing: feed the SSE one a well-formed stream and
    // check the events it parses are the expected ones, split or whole.
    let stream = b"\x03event: token\r\ndata: {\"text\":\"a\"}\r\n\r\n: keep-alive\n\nevent: done\ndata: x\ndata: y\n\n";
    polyllm_fuzz::sse_parser(stream);
    let mut p = polyllm_common::sse::SseParser::new();
    let evs = p.push(&stream[1..]);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].data, "x\ny");
    // The router harness panics on a request it should refuse but accepts: show that it refuses.
    let limits = router::validation::Limits { max_prompt_chars: 64 };
    assert!(router::validation::generate(br#"{"prompt":"hi","max_tokens":0}"#, limits).is_err());
    assert!(router::validation::generate(br#"{"prompt":"hi","max_tokens":3}"#, limits).is_ok());
}
