//! Buffer lifetimes of a planned program and an SVG picture of the plan:
//! one bar per arena buffer, kernel step on x, arena offset on y, each bar
//! named in place or in a legend, so the picture reads without hovering.

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

/// A byte count for people: B, KiB or MiB.
fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Width in pixels of `n` characters of the 11 px monospace font.
fn text_width(n: usize) -> f64 {
    n as f64 * 6.7
}

/// Most legend entries drawn; the rest are counted (each bar's tooltip
/// still names its buffer).
const LEGEND_MAX: usize = 240;

/// The memory plan as an SVG timeline: one bar per arena buffer, kernel
/// step on x, arena offset on y. Each bar is labelled with its node's name
/// and size where that fits inside it, else with its buffer id, which a
/// legend under the plot expands; axes are labelled in steps and bytes.
/// Every bar also carries the whole description as a tooltip.
pub fn plan_svg(p: &KernelProgram, title: &str) -> String {
    let buffers = arena_buffers(p);
    let (w, left, top, plot_h) = (900.0, 86.0, 40.0, 400.0);
    let steps = p.kernels.len().max(1) as f64;
    let arena = p.memory.arena.max(1) as f64;
    let pw = w - left - 20.0;
    let x = |s: f64| left + pw * s / steps;
    let y = |o: f64| top + plot_h * o / arena;
    let describe = |b: BufferId, off: usize, size: usize, s0: usize, s1: usize| {
        format!(
            "{b} {}: {} @ {off}, steps {s0}..={s1}",
            p.buffer(b).node,
            human_bytes(size)
        )
    };
    // Bars, and the buffers whose name did not fit in their bar.
    let mut bars = String::new();
    let mut legend: Vec<String> = Vec::new();
    let palette = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    for (k, &(b, off, size, (s0, s1))) in buffers.iter().enumerate() {
        let (x0, x1) = (x(s0 as f64), x(s1 as f64 + 1.0));
        let (y0, y1) = (y(off as f64), y((off + size) as f64));
        let (bw, bh) = ((x1 - x0).max(1.0), (y1 - y0).max(1.0));
        let full = describe(b, off, size, s0, s1);
        writeln!(
            bars,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{bw:.1}" height="{bh:.1}" fill="{}" fill-opacity="0.75" stroke="#333"><title>{}</title></rect>"##,
            palette[k % palette.len()],
            escape(&full)
        )
        .unwrap();
        let name = format!("{} {}", p.buffer(b).node, human_bytes(size));
        let id = b.to_string();
        // A line of text needs 12 px of height and its width plus a margin.
        let fits = |text: &str| bh >= 12.0 && text_width(text.chars().count()) + 4.0 <= bw;
        let label = if fits(&name) {
            Some(name)
        } else {
            legend.push(full);
            fits(&id).then_some(id)
        };
        if let Some(label) = label {
            writeln!(
                bars,
                r#"<text x="{:.1}" y="{:.1}" pointer-events="none">{}</text>"#,
                x0 + 2.0,
                y0 + bh / 2.0 + 4.0,
                escape(&label)
            )
            .unwrap();
        }
    }
    let legend_rows =
        legend.len().min(LEGEND_MAX).div_ceil(2) + usize::from(legend.len() > LEGEND_MAX);
    let legend_top = top + plot_h + 56.0;
    let h = legend_top
        + if legend.is_empty() {
            0.0
        } else {
            18.0 + 14.0 * legend_rows as f64
        };

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
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{plot_h}" fill="none" stroke="#888"/>"##
    )
    .unwrap();
    s.push_str(&bars);
    // x axis: kernel steps, thinned so that labels stay apart.
    let every = (1..).find(|k| pw * *k as f64 / steps >= 28.0).unwrap_or(1);
    for i in (0..=p.kernels.len()).filter(|i| i % every == 0 || *i == p.kernels.len()) {
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{i}</text>"##,
            x(i as f64),
            top + plot_h + 14.0
        )
        .unwrap();
    }
    writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">kernel step</text>"##,
        left + pw / 2.0,
        top + plot_h + 32.0
    )
    .unwrap();
    // y axis: arena offsets at quarters.
    for q in 0..=4 {
        let off = m.arena * q / 4;
        writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            left - 4.0,
            y(off as f64) + 4.0,
            human_bytes(off)
        )
        .unwrap();
    }
    writeln!(
        s,
        r#"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">arena offset</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    )
    .unwrap();
    if !legend.is_empty() {
        writeln!(
            s,
            r#"<text x="{left}" y="{legend_top}">buffers too small to name in their bar:</text>"#
        )
        .unwrap();
        let col = (w - left) / 2.0;
        for (i, entry) in legend.iter().take(LEGEND_MAX).enumerate() {
            writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
                left + col * (i % 2) as f64,
                legend_top + 16.0 + 14.0 * (i / 2) as f64,
                escape(entry)
            )
            .unwrap();
        }
        if legend.len() > LEGEND_MAX {
            writeln!(
                s,
                r##"<text x="{left}" y="{:.1}" fill="#333">... and {} more (each bar's tooltip names it)</text>"##,
                legend_top + 16.0 + 14.0 * (LEGEND_MAX / 2) as f64,
                legend.len() - LEGEND_MAX
            )
            .unwrap();
        }
    }
    s.push_str("</svg>\n");
    s
}
