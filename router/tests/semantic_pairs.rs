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

fn embedder() -> Embedder {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("EMBEDDER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("models/all-MiniLM-L6-v2"));
    Embedder::load(&dir).unwrap_or_else(|e| panic!("MiniLM is needed (fetch-models --only minilm): {e}"))
}

fn pairs() -> Vec<Pair> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let embedder = embedder();
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
    // Every prompt against every prompt of another pair: different questions (7,000+ pairs) must not
    // share answers either.
    let embedder = embedder();
    let mut texts: Vec<&str> = pairs.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]).collect();
    texts.sort();
    texts.dedup();
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedder.embed(t).unwrap().vector).collect();
    let markers: Vec<Markers> = texts.iter().map(|t| Markers::of(t)).collect();
    let partners: std::collections::HashSet<(&str, &str)> = pairs
        .iter()
        .filter(|p| p.hit)
        .flat_map(|p| [(p.a.as_str(), p.b.as_str()), (p.b.as_str(), p.a.as_str())])
        .collect();
    let (mut cross, mut cross_hits) = (0usize, 0usize);
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            if partners.contains(&(texts[i], texts[j])) {
                continue;
            }
            cross += 1;
            if accepts(cosine(&vectors[i], &vectors[j]), DEFAULT_THRESHOLD, &markers[i], &markers[j]) {
                cross_hits += 1;
                println!("different questions accepted: {:?} / {:?}", texts[i], texts[j]);
            }
        }
    }
    println!("different questions: {cross_hits} of {cross} pairs accepted");
    assert!((cross_hits as f64) <= 0.01 * cross as f64, "{cross_hits} of {cross}");
    // The guards earn their keep: similarity alone lets near misses through at this threshold.
    let (_, unguarded) = rates(&pairs, DEFAULT_THRESHOLD, false);
    assert!(unguarded > false_hit, "the guards change nothing here ({unguarded})");
}
