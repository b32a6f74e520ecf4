//! The token embedding table is never held as f32: lookups dequantize the rows they read, from the
//! tied output head where there is one. On all three models, the rows looked up are bit for bit
//! candle's dequantization of the whole table, for every kernel choice.
mod support;

use candle_core::Device;
use inference::kernels::Kernels;
use inference::model::{GgufHeader, Weights};

fn check(model: &str) {
    let path = support::model(model);
    let header = GgufHeader::read(&path).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let table = header.content.tensor(&mut file, "token_embd.weight", &Device::Cpu).unwrap();
    let full = table.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let rows = full.len() as u32;
    let ids = [0, 1, 2, 17, 1000, rows / 2, rows - 1];
    for kernels in [Kernels::Fast, Kernels::Repack, Kernels::File] {
        let weights = Weights::load(GgufHeader::read(&path).unwrap(), &Device::Cpu, 64, kernels).unwrap();
        let got = weights.embed(&ids, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        for (i, &id) in ids.iter().enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&got[i]) == bits(&full[id as usize]), "{model} {kernels:?}: row {id} differs");
        }
        assert!(weights.embed(&[rows], &Device::Cpu).is_err(), "{model}: an id past the table must fail");
    }
    eprintln!("{model}: {:?} table of {rows} rows, lookups bit for bit", table.dtype());
}

#[test]
fn lookups_are_the_dequantized_table_gemma() {
    check(support::GEMMA);
}

#[test]
fn lookups_are_the_dequantized_table_qwen05() {
    check(support::QWEN05);
}

#[test]
fn lookups_are_the_dequantized_table_qwen15() {
    check(support::QWEN15);
}
