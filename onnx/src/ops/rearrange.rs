//! Ops that move values to computed places:
//!
//! - `CenterCropPad` (slice and zero pad).
//! - `Col2Im` (scatter-add of the columns into the padded image).
//! - `MaxUnpool` (scatter-add at the run-time indices; an index given twice
//!   holds the mean of its values, not the last one).
//! - `ReverseSequence` (one gather at indices computed from the run-time
//!   lengths).

use kiln_graph::{DType, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};
use crate::ops::tables::{int_constant, one, strides, unravel};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("CenterCropPad", center_crop_pad),
    ("Col2Im", col2im),
    ("MaxUnpool", max_unpool),
    ("ReverseSequence", reverse_sequence),
];

/// `CenterCropPad`: each axis cropped (centered, the extra element at the
/// end) or zero padded (likewise) to the import-time `shape`.
fn center_crop_pad<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let mut x = n.input(0)?;
    let shape = n.const_ints(1)?.ok_or("input 'shape' is required")?;
    let rank = x.rank();
    let axes: Vec<usize> = match n.ints("axes") {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        None => (0..rank).collect(),
    };
    if axes.len() != shape.len() {
        return Err(format!("shape has {} values for {} axes", shape.len(), axes.len()).into());
    }
    let dims = fixed_shape(x)?;
    let mut before = vec![0; rank];
    let mut after = vec![0; rank];
    for (&a, &want) in axes.iter().zip(&shape) {
        let want = usize::try_from(want).map_err(|_| format!("bad shape {shape:?}"))?;
        let dim = dims[a];
        if want < dim {
            let start = (dim - want) / 2;
            x = x.slice_axis(a as i64, start as i64, (start + want) as i64, 1)?;
        } else if want > dim {
            before[a] = (want - dim) / 2;
            after[a] = want - dim - before[a];
        }
    }
    if before.iter().chain(&after).any(|&p| p > 0) {
        x = x.pad(&before, &after, 0.0)?;
    }
    Ok(vec![x])
}

// ------------------------------------------------------- Col2Im, MaxUnpool

/// `Col2Im`: the columns `[N, C * prod(block), L]` added into the padded
/// image at the positions each block element covers (one scatter-add at
/// constant indices), then the padding cut off.
pub(crate) fn col2im<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let image = n.const_ints(1)?.ok_or("input 'image_shape' is required")?;
    let block = n.const_ints(2)?.ok_or("input 'block_shape' is required")?;
    let r = image.len();
    if block.len() != r || r == 0 {
        return Err(
            format!("image_shape {image:?} and block_shape {block:?} differ in length").into(),
        );
    }
    let to_usize = |v: &[i64], what: &str| -> R<Vec<usize>> {
        v.iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("bad {what} {v:?}").into()))
            .collect()
    };
    let image = to_usize(&image, "image_shape")?;
    let block = to_usize(&block, "block_shape")?;
    let dil = to_usize(&n.ints("dilations").unwrap_or(vec![1; r]), "dilations")?;
    let st = to_usize(&n.ints("strides").unwrap_or(vec![1; r]), "strides")?;
    let pads = to_usize(&n.ints("pads").unwrap_or(vec![0; 2 * r]), "pads")?;
    if dil.len() != r || st.len() != r || pads.len() != 2 * r {
        return Err("dilations, strides and pads must match the image rank".into());
    }
    let xs = fixed_shape(x)?;
    let bsz: usize = block.iter().product();
    if xs.len() != 3 || bsz == 0 || xs[1] % bsz != 0 {
        return Err(format!("input shape {xs:?} does not fit block_shape {block:?}").into());
    }
    let (nb, c) = (xs[0], xs[1] / bsz);
    let padded: Vec<usize> = (0..r).map(|i| image[i] + pads[i] + pads[r + i]).collect();
    let mut grid = Vec::with_capacity(r);
    for i in 0..r {
        let span = dil[i] * (block[i] - 1) + 1;
        if padded[i] < span || st[i] == 0 {
            return Err(format!("block {block:?} does not fit the padded image {padded:?}").into());
        }
        grid.push((padded[i] - span) / st[i] + 1);
    }
    let l: usize = grid.iter().product();
    if xs[2] != l {
        return Err(format!("input has {} blocks, the image holds {l}", xs[2]).into());
    }
    let pst = strides(&padded);
    let mut idx = Vec::with_capacity(bsz * l);
    for b in 0..bsz {
        let bi = unravel(b, &block);
        for li in 0..l {
            let gi = unravel(li, &grid);
            let flat: usize = (0..r)
                .map(|d| (gi[d] * st[d] + bi[d] * dil[d]) * pst[d])
                .sum();
            idx.push(flat as i64);
        }
    }
    let total: usize = padded.iter().product();
    let idx = int_constant(n, idx, &[bsz * l])?;
    let zeros = n.g.full(0.0, x.dtype(), &[nb, c, total])?;
    let updates = x.reshape(vec![nb, c, bsz * l])?;
    let mut y = zeros.scatter_add(idx, updates, 2)?;
    let mut shape = vec![nb, c];
    shape.extend_from_slice(&padded);
    y = y.reshape(shape)?;
    for i in 0..r {
        if pads[i] > 0 || pads[r + i] > 0 {
            y = y.slice_axis(
                (i + 2) as i64,
                pads[i] as i64,
                (pads[i] + image[i]) as i64,
                1,
            )?;
        }
    }
    Ok(vec![y])
}

/// `MaxUnpool`: `X` placed at its flat `indices` in a zero tensor of the
/// inferred shape (a scatter-add; an index given twice holds the mean of
/// its values, which is the value itself for MaxPool's indices), then
/// zero padded at the end to `output_shape` where that is given.
fn max_unpool<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, idx) = (n.input(0)?, n.input(1)?);
    let output_shape = n.const_ints(2)?;
    let xs = fixed_shape(x)?;
    let kernel = n.ints("kernel_shape").ok_or("kernel_shape is required")?;
    let r = kernel.len();
    if xs.len() != r + 2 {
        return Err(format!("X shape {xs:?} does not fit kernel_shape {kernel:?}").into());
    }
    let st = n.ints("strides").unwrap_or(vec![1; r]);
    let pads = n.ints("pads").unwrap_or(vec![0; 2 * r]);
    if st.len() != r || pads.len() != 2 * r {
        return Err("strides and pads must match kernel_shape".into());
    }
    let mut inferred = vec![xs[0], xs[1]];
    for i in 0..r {
        let d = (xs[i + 2] as i64 - 1) * st[i] - pads[i] - pads[r + i] + kernel[i];
        let d = usize::try_from(d).map_err(|_| format!("output dim {i} would be {d}"))?;
        inferred.push(d);
    }
    // Zero padding at the end up to output_shape.
    let mut after = vec![0; inferred.len()];
    if let Some(shape) = &output_shape {
        if shape.len() != inferred.len() {
            return Err(format!("output_shape {shape:?} has the wrong rank").into());
        }
        for (i, (&want, &have)) in shape.iter().zip(&inferred).enumerate() {
            match usize::try_from(want) {
                Ok(want) if want >= have => after[i] = want - have,
                _ => {
                    return n.unsupported(format!(
                        "output_shape {shape:?} smaller than the inferred {inferred:?}"
                    ))
                }
            }
        }
    }
    let total: usize = inferred.iter().product();
    let numel: usize = xs.iter().product();
    let flat_i = idx.cast(DType::I64)?.reshape(vec![numel])?;
    let flat_x = x.reshape(vec![numel])?;
    let zeros = n.g.full(0.0, x.dtype(), &[total])?;
    let sum = zeros.scatter_add(flat_i, flat_x, 0)?;
    let ones = n.g.full(1.0, x.dtype(), &[numel])?;
    let count = zeros.scatter_add(flat_i, ones, 0)?.maximum(1.0)?;
    let mut y = sum.div(count)?.reshape(inferred)?;
    if after.iter().any(|&a| a > 0) {
        y = y.pad(&vec![0; after.len()], &after, 0.0)?;
    }
    Ok(vec![y])
}

/// `ReverseSequence`: the first `sequence_lens[b]` steps of each batch
/// entry reversed: one gather over the merged batch and time dims at
/// indices computed from the (run-time) lengths.
fn reverse_sequence<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, lens) = (n.input(0)?, n.input(1)?);
    let xs = fixed_shape(x)?;
    let (ba, ta) = (n.int("batch_axis", 1), n.int("time_axis", 0));
    if !matches!((ba, ta), (0, 1) | (1, 0)) || xs.len() < 2 {
        return n.unsupported(format!("batch_axis {ba} with time_axis {ta}"));
    }
    let (ba, ta) = (ba as usize, ta as usize);
    let (b, t) = (xs[ba], xs[ta]);
    let lead = vec![xs[0], xs[1]];
    let tt = n.g.iota(DType::I64, lead.clone(), ta)?;
    let bb = n.g.iota(DType::I64, lead.clone(), ba)?;
    let mut lshape = vec![1, 1];
    lshape[ba] = b;
    let len = lens.cast(DType::I64)?.reshape(lshape)?;
    let rev = len.sub(1i64)?.sub(tt)?;
    let src = n.g.select(tt.lt(len)?, rev, tt)?;
    let flat = if ta == 0 {
        src.mul(b as i64)?.add(bb)?
    } else {
        bb.mul(t as i64)?.add(src)?
    };
    let mut merged = vec![xs[0] * xs[1]];
    merged.extend_from_slice(&xs[2..]);
    Ok(one(x.reshape(merged)?.gather(flat, 0)?))
}
