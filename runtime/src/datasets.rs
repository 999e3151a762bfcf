//! Small datasets for demos and tests.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads the UCI handwritten digits (`examples/data/digits/digits.csv.gz`):
/// one image per line, 64 pixel values (0..16) then the label. Returns the
/// pixels `[n * 64]` as f32 and the labels `[n]`.
pub fn digits(path: &Path) -> Result<(Vec<f32>, Vec<i64>)> {
    let io = |e| Error::io("reading", path, e);
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).map_err(io)?)
        .read_to_string(&mut text)
        .map_err(io)?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: String| Error::Dataset {
            path: path.display().to_string(),
            reason: format!("line {}: {what}", i + 1),
        };
        let v: Vec<f32> = line
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<f32>()
                    .map_err(|e| bad(format!("'{t}': {e}")))
            })
            .collect::<Result<_>>()?;
        if v.len() != 65 {
            return Err(bad(format!(
                "{} values, expected 64 pixels and a label",
                v.len()
            )));
        }
        pixels.extend_from_slice(&v[..64]);
        labels.push(v[64] as i64);
    }
    Ok((pixels, labels))
}

/// The digit images `rows` (indices into `pixels` from [`digits`]) read as
/// sequences of their pixel rows: `[8, rows.len(), 8]` (time, batch, pixels),
/// scaled to `[0, 1]`, the input of a recurrent model.
pub fn digit_sequences(pixels: &[f32], rows: &[usize]) -> kiln_graph::Array {
    let n = rows.len();
    let mut v = vec![0f32; 8 * n * 8];
    for (b, &i) in rows.iter().enumerate() {
        for t in 0..8 {
            for f in 0..8 {
                v[(t * n + b) * 8 + f] = pixels[i * 64 + t * 8 + f] / 16.0;
            }
        }
    }
    kiln_graph::Array::from_vec(vec![8, n, 8], v).expect("8 * n * 8 values")
}

/// How many positions of two label arrays agree (predicted classes against
/// labels, or two devices' predictions); `None` unless both are i64 with the
/// same number of elements.
pub fn count_matches(a: &kiln_graph::Array, b: &kiln_graph::Array) -> Option<usize> {
    let (a, b) = (a.as_slice::<i64>()?, b.as_slice::<i64>()?);
    (a.len() == b.len()).then(|| a.iter().zip(b).filter(|(x, y)| x == y).count())
}

/// The fixed split of the `n` digit images every digits demo and test
/// uses: a seeded shuffle, the first 80% to train, the rest held out.
/// Returns (train, held-out) row indices.
pub fn digits_split(n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| kiln_graph::rng::bits(7, i as u64));
    let held_out = order.split_off(n * 4 / 5);
    (order, held_out)
}
