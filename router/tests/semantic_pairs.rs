//! The semantic cache's threshold and guards, measured on `datasets/semantic_pairs.jsonl` with the
//! real MiniLM embedder: paraphrases that should share an answer, and near misses that must not
//! (other numbers, operators, names, identifiers, languages, directions, negations, nouns). Prints
//! the curve (`--nocapture`) and asserts the operating point: at least 60% of paraphrases hit,
//! at most 1% of near misses do.
use polyllm_common::features::Embedder;
use router::semantic::{accepts, cosine, Markers, DEFAULT_THRESHOLD};
use std::path::Path;

struct Pair {
    hit: bool,
    kind: String,
    similarity: f32,
    same_markers: bool,
    a: String,
    b: String,
}

fn pairs() -> Vec<Pair> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("EMBEDDER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("models/all-MiniLM-L6-v2"));
    let embedder =
        Embedder::load(&dir).unwrap_or_else(|e| panic!("MiniLM is needed (fetch-models --only minilm): {e}"));
    let text = std::fs::read_to_string(root.join("datasets/semantic_pairs.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (a, b) = (v["a"].as_str().unwrap().to_string(), v["b"].as_str().unwrap().to_string());
            let (ea, eb) = (embedder.embed(&a).unwrap(), embedder.embed(&b).unwrap());
            Pair {
                hit: v["label"] == "hit",
                kind: v["kind"].as_str().unwrap().to_string(),
                similarity: cosine(&ea.vector, &eb.vector),
                same_markers: Markers::of(&a).compatible(&Markers::of(&b)),
                a,
                b,
            }
        })
        .collect()
}

fn rates(pairs: &[Pair], threshold: f32, guards: bool) -> (f64, f64) {
    let rate = |want: bool| {
        let set: Vec<&Pair> = pairs.iter().filter(|p| p.hit == want).collect();
        let hits = set
            .iter()
            .filter(|p| {
                if guards {
                    accepts(p.similarity, threshold, &Markers::of(&p.a), &Markers::of(&p.b))
                } else {
                    p.similarity >= threshold
                }
            })
            .count();
        hits as f64 / set.len() as f64
    };
    (rate(true), rate(false))
}

#[test]
fn the_threshold_and_guards_hit_paraphrases_and_keep_near_misses_out() {
    let pairs = pairs();
    let (n_hit, n_miss) = (pairs.iter().filter(|p| p.hit).count(), pairs.iter().filter(|p| !p.hit).count());
    assert!(n_hit >= 50 && n_miss >= 50, "{n_hit} paraphrases, {n_miss} near misses");
    println!("| threshold | paraphrases hit (similarity only) | near misses hit (similarity only) | paraphrases hit (with guards) | near misses hit (with guards) |");
    println!("|---|---|---|---|---|");
    for t in [0.70f32, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95] {
        let (ph, mh) = rates(&pairs, t, false);
        let (pg, mg) = rates(&pairs, t, true);
        println!("| {t:.2} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |", ph * 100.0, mh * 100.0, pg * 100.0, mg * 100.0);
    }
    for p in pairs.iter().filter(|p| !p.hit && p.similarity >= DEFAULT_THRESHOLD) {
        println!(
            "near miss above the threshold ({:.3}, {}, guarded: {}): {:?} / {:?}",
            p.similarity, p.kind, !p.same_markers, p.a, p.b
        );
    }
    for p in pairs
        .iter()
        .filter(|p| p.hit && !accepts(p.similarity, DEFAULT_THRESHOLD, &Markers::of(&p.a), &Markers::of(&p.b)))
    {
        println!("paraphrase missed ({:.3}, markers equal: {}): {:?} / {:?}", p.similarity, p.same_markers, p.a, p.b);
    }
    let (hit, false_hit) = rates(&pairs, DEFAULT_THRESHOLD, true);
    println!("at the default threshold {DEFAULT_THRESHOLD}: {:.0}% of {n_hit} paraphrases hit, {:.1}% of {n_miss} near misses", hit * 100.0, false_hit * 100.0);
    assert!(hit >= 0.60, "only {:.0}% of paraphrases hit", hit * 100.0);
    assert!(false_hit <= 0.01, "{:.1}% of near misses hit", false_hit * 100.0);
    // The guards earn their keep: similarity alone lets near misses through at this threshold.
    let (_, unguarded) = rates(&pairs, DEFAULT_THRESHOLD, false);
    assert!(unguarded > false_hit, "the guards change nothing here ({unguarded})");
}
