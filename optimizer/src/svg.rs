//! Buffer lifetimes of a planned program and an SVG picture of the plan:
//! one bar per arena buffer, kernel step on x, arena offset on y.

use std::fmt::Write;

use crate::kernel::{BufferId, KernelProgram, Storage};

/// For each buffer, the first and last kernel step that touches it.
pub fn lifetimes(p: &KernelProgram) -> Vec<Option<(usize, usize)>> {
    let mut life: Vec<Option<(usize, usize)>> = vec![None; p.buffers.len()];
    for (i, k) in p.kernels.iter().enumerate() {
        for b in k.outputs().into_iter().chain(k.reads()) {
            let e = life[b.0].get_or_insert((i, i));
            e.0 = e.0.min(i);
            e.1 = e.1.max(i);
        }
    }
    life
}

/// The arena buffers with their offset, size and lifetime, by offset.
pub fn arena_buffers(p: &KernelProgram) -> Vec<(BufferId, usize, usize, (usize, usize))> {
    let life = lifetimes(p);
    let mut v: Vec<_> = p
        .buffers
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b.storage {
            Storage::Arena { offset } => life[i].map(|l| (BufferId(i), offset, b.size_bytes(), l)),
            _ => None,
        })
        .collect();
    v.sort_by_key(|x| (x.3 .0, x.1));
    v
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The memory plan as an SVG timeline.
pub fn plan_svg(p: &KernelProgram, title: &str) -> String {
    let (w, h, left, top, bottom) = (900.0, 480.0, 70.0, 40.0, 40.0);
    let steps = p.kernels.len().max(1) as f64;
    let arena = p.memory.arena.max(1) as f64;
    let (pw, ph) = (w - left - 20.0, h - top - bottom);
    let x = |s: f64| left + pw * s / steps;
    let y = |o: f64| top + ph * o / arena;
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="monospace" font-size="11">"#).unwrap();
    writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##).unwrap();
    let m = &p.memory;
    writeln!(
        s,
        r#"<text x="{left}" y="18">{}: arena {} B, liveness lower bound {} B, unplanned {} B</text>"#,
        escape(title),
        m.arena,
        m.lower_bound,
        m.unplanned
    )
    .unwrap();
    writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    )
    .unwrap();
    let palette = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    for (k, (b, off, size, (s0, s1))) in arena_buffers(p).into_iter().enumerate() {
        let (x0, x1) = (x(s0 as f64), x(s1 as f64 + 1.0));
        let (y0, y1) = (y(off as f64), y((off + size) as f64));
        let name = &p.buffer(b).node;
        writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.75" stroke="#333"><title>{b} {} {} B @ {off}, steps {s0}..={s1}</title></rect>"##,
            (x1 - x0).max(1.0),
            (y1 - y0).max(1.0),
            palette[k % palette.len()],
            escape(name),
            size
        )
        .unwrap();
    }
    for i in 0..=p.kernels.len() {
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{i}</text>"##,
            x(i as f64),
            h - bottom + 14.0
        )
        .unwrap();
    }
    writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">kernel step</text>"##,
        left + pw / 2.0,
        h - 8.0
    )
    .unwrap();
    writeln!(
        s,
        r##"<text x="8" y="{top}">0 B</text><text x="8" y="{:.1}">{} B</text>"##,
        top + ph,
        m.arena
    )
    .unwrap();
    s.push_str("</svg>\n");
    s
}
