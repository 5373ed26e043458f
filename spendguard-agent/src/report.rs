//! `spendguard report`: spend from the audit log, grouped by agent, model or day, as a table, CSV
//! or JSON, and a chart of spend per day per agent (SVG or PNG).
//!
//! The agent groups the audit events into [`Row`]s (day × agent × model) next to its ledger (the
//! `report` control op), so only the groups cross the control socket; the CLI regroups them.
//! Spend is what was charged (settled), counted on the local day it was charged, like `status`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use spendguard_ledger::{AuditEvent, Decision, Zone};
use spendguard_pricing::MicroUsd;

/// One day × agent × model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Local date (`YYYY-MM-DD`) in the report's zone.
    pub day: String,
    pub agent: String,
    pub model: String,
    pub requests: u64,
    pub blocked: u64,
    pub would_block: u64,
    /// Charged (settled) spend.
    #[serde(with = "spendguard_ledger::usd")]
    pub spend: MicroUsd,
}

/// What a report groups by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum By {
    #[default]
    Agent,
    Model,
    Day,
}

/// How a report is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

/// Groups `events` (up to `until`, exclusive) into rows, days in `zone`.
pub fn rows(events: &[AuditEvent], until: Option<DateTime<Utc>>, zone: &Zone) -> Vec<Row> {
    let mut groups: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    // Delegations are audited too, but they are not requests.
    for e in events
        .iter()
        .filter(|e| e.delegation.is_none() && until.is_none_or(|u| e.time < u))
    {
        let at = e.settled_at.unwrap_or(e.time);
        let day = zone.local(at).format("%Y-%m-%d").to_string();
        let key = (day.clone(), e.agent.to_string(), e.model.clone());
        let r = groups.entry(key).or_insert_with(|| Row {
            day,
            agent: e.agent.to_string(),
            model: e.model.clone(),
            requests: 0,
            blocked: 0,
            would_block: 0,
            spend: MicroUsd::ZERO,
        });
        r.requests += 1;
        match e.decision {
            Decision::Blocked => r.blocked += 1,
            Decision::WouldBlock => r.would_block += 1,
            Decision::Allowed => {}
        }
        r.spend = r
            .spend
            .saturating_add(e.final_cost.unwrap_or(MicroUsd::ZERO));
    }
    groups.into_values().collect()
}

/// One line of a report: the group's key and its sums.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub key: String,
    pub requests: u64,
    pub blocked: u64,
    pub would_block: u64,
    #[serde(with = "spendguard_ledger::usd")]
    pub spend: MicroUsd,
}

/// `rows` summed by `by`, sorted by key; and the total.
pub fn group(rows: &[Row], by: By) -> (Vec<Group>, Group) {
    let mut g: BTreeMap<String, Group> = BTreeMap::new();
    let mut total = Group {
        key: "total".into(),
        requests: 0,
        blocked: 0,
        would_block: 0,
        spend: MicroUsd::ZERO,
    };
    for r in rows {
        let key = match by {
            By::Agent => r.agent.clone(),
            By::Model => r.model.clone(),
            By::Day => r.day.clone(),
        };
        let e = g.entry(key.clone()).or_insert_with(|| Group {
            key,
            requests: 0,
            blocked: 0,
            would_block: 0,
            spend: MicroUsd::ZERO,
        });
        for t in [&mut *e, &mut total] {
            t.requests += r.requests;
            t.blocked += r.blocked;
            t.would_block += r.would_block;
            t.spend = t.spend.saturating_add(r.spend);
        }
    }
    (g.into_values().collect(), total)
}

fn by_name(by: By) -> &'static str {
    match by {
        By::Agent => "agent",
        By::Model => "model",
        By::Day => "day",
    }
}

/// The report as text in `format`.
pub fn render(rows: &[Row], by: By, format: Format) -> String {
    let (groups, total) = group(rows, by);
    match format {
        Format::Json => serde_json::to_string_pretty(&serde_json::json!({
            "by": by_name(by),
            "groups": groups,
            "total": total,
        }))
        .unwrap_or_default(),
        Format::Csv => {
            let mut out = format!("{},requests,blocked,would_block,spend_usd\n", by_name(by));
            for g in groups.iter().chain(std::iter::once(&total)) {
                let key = if g.key.contains([',', '"', '\n']) {
                    format!("\"{}\"", g.key.replace('"', "\"\""))
                } else {
                    g.key.clone()
                };
                out.push_str(&format!(
                    "{key},{},{},{},{}\n",
                    g.requests,
                    g.blocked,
                    g.would_block,
                    g.spend.to_string().trim_start_matches('$')
                ));
            }
            out
        }
        Format::Table => {
            let w = groups
                .iter()
                .map(|g| g.key.chars().count())
                .max()
                .unwrap_or(0)
                .max(8);
            let mut out = format!(
                "{:<w$}  {:>9}  {:>8}  {:>11}  {:>14}\n",
                by_name(by).to_uppercase(),
                "REQUESTS",
                "BLOCKED",
                "WOULD_BLOCK",
                "SPEND"
            );
            for g in groups.iter().chain(std::iter::once(&total)) {
                out.push_str(&format!(
                    "{:<w$}  {:>9}  {:>8}  {:>11}  {:>14}\n",
                    g.key,
                    g.requests,
                    g.blocked,
                    g.would_block,
                    g.spend.to_string()
                ));
            }
            out
        }
    }
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("--chart {0}: the chart is drawn as .svg or .png; name the file so")]
    Format(String),
    #[error("drawing the chart {path} failed: {detail}")]
    Draw { path: String, detail: String },
}

/// Where Debian's `fonts-dejavu-core` (and other distributions' DejaVu packages) put the font;
/// `SPENDGUARD_FONT` overrides.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TrueType font from disk as plotters' "sans-serif", once per process: plotters'
/// `ab_glyph` text layout (on here, and unified into every workspace build by the bench's PNG
/// chart) looks up no system fonts, and without one every label fails to draw.
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var_os("SPENDGUARD_FONT")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(std::path::PathBuf::from))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no font file at {} (Debian: apt-get install fonts-dejavu-core), and SPENDGUARD_FONT is unset",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType/OpenType font", path.display()))
    })
    .clone()
}

/// Agents with a colour of their own in the chart; the rest share one grey bar segment (more
/// colours than this cannot be told apart).
pub const CHART_MAX_AGENTS: usize = 10;

/// The chart's numbers: days, and the stacked series (biggest spender at the bottom).
struct ChartData {
    days: Vec<String>,
    /// Name (or "N other agents"), total, dollars per day (index into `days`).
    series: Vec<(String, f64, Vec<f64>)>,
    /// The tallest day.
    top: f64,
}

impl ChartData {
    fn new(rows: &[Row]) -> ChartData {
        // agent → day → dollars (display only).
        let mut by_agent: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
        for r in rows {
            *by_agent
                .entry(&r.agent)
                .or_default()
                .entry(&r.day)
                .or_default() += r.spend.as_usd_f64();
        }
        let days: Vec<String> = {
            let mut d: Vec<&str> = by_agent.values().flat_map(|m| m.keys().copied()).collect();
            d.sort_unstable();
            d.dedup();
            d.into_iter().map(str::to_string).collect()
        };
        let per_day = |m: &BTreeMap<&str, f64>| -> Vec<f64> {
            days.iter()
                .map(|d| m.get(d.as_str()).copied().unwrap_or(0.0))
                .collect()
        };
        let mut agents: Vec<(String, f64, Vec<f64>)> = by_agent
            .iter()
            .map(|(a, m)| (a.to_string(), m.values().sum(), per_day(m)))
            .collect();
        // Biggest first (then by name, so equal spenders keep a stable order).
        agents.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if agents.len() > CHART_MAX_AGENTS {
            let rest = agents.split_off(CHART_MAX_AGENTS - 1);
            let mut sum = vec![0.0; days.len()];
            for (_, _, v) in &rest {
                for (s, x) in sum.iter_mut().zip(v) {
                    *s += x;
                }
            }
            let total = sum.iter().sum();
            agents.push((format!("{} other agents", rest.len()), total, sum));
        }
        let top = (0..days.len())
            .map(|i| agents.iter().map(|s| s.2[i]).sum::<f64>())
            .fold(0.0_f64, f64::max);
        ChartData {
            days,
            series: agents,
            top,
        }
    }

    /// The y axis' top: a little above the tallest day; $1 when nothing was spent (an empty
    /// chart still has a readable axis).
    fn axis_top(&self) -> f64 {
        if self.top > 0.0 {
            self.top * 1.08
        } else {
            1.0
        }
    }
}

const CHART_FONT: &str = "sans-serif";
const GREY: plotters::style::RGBColor = plotters::style::RGBColor(150, 150, 150);

/// Text width in pixels at `size` (an estimate when the font cannot measure it).
fn text_width(text: &str, size: u32) -> u32 {
    use plotters::style::IntoFont as _;
    (CHART_FONT, size)
        .into_font()
        .box_size(text)
        .map_or(text.len() as u32 * size * 6 / 10, |(w, _)| w)
}

fn money(v: f64, decimals: usize) -> String {
    format!("${v:.decimals$}")
}

/// Spend per day per agent as stacked bars, the biggest spender at the bottom, one colour per
/// agent (at most [`CHART_MAX_AGENTS`]; the rest together in grey), and a legend beside the plot
/// with each agent's total. Written to `path`: `.svg` or `.png`.
pub fn chart(rows: &[Row], path: &Path, title: &str) -> Result<(), ChartError> {
    use plotters::prelude::*;
    let shown = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let png = match ext.as_deref() {
        Some("svg") => false,
        Some("png") => true,
        _ => return Err(ChartError::Format(shown)),
    };
    let fail = |detail: String| ChartError::Draw {
        path: shown.clone(),
        detail,
    };
    register_font().map_err(&fail)?;
    let data = ChartData::new(rows);
    let decimals = match data.axis_top() {
        t if t >= 1.0 => 2,
        t if t >= 0.1 => 3,
        t if t >= 0.01 => 4,
        _ => 6,
    };
    let legend_w = data
        .series
        .iter()
        .map(|(name, total, _)| text_width(&format!("{name}  {}", money(*total, decimals)), 13))
        .chain([text_width("Total per agent", 14)])
        .max()
        .unwrap_or(0)
        + 48;
    let plot_w = (110 + 40 * data.days.len() as u32).clamp(560, 2000);
    let size = (plot_w + legend_w, 520);
    let drawn = if png {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        draw_chart(&root, &data, title, plot_w, decimals)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    } else {
        let root = SVGBackend::new(path, size).into_drawing_area();
        draw_chart(&root, &data, title, plot_w, decimals)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    drawn.map_err(fail)
}

fn draw_chart<DB: plotters::prelude::DrawingBackend>(
    root: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    data: &ChartData,
    title: &str,
    plot_w: u32,
    decimals: usize,
) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let body = root
        .margin(8, 0, 0, 0)
        .titled(title, (CHART_FONT, 20))
        .map_err(e)?;
    // Text placed by chart coordinates is drawn on `root`: `backend_coord` is in its pixels.
    let label = |size: u32| {
        TextStyle::from((CHART_FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Top))
    };
    let (plot, legend) = body.split_horizontally(plot_w);
    let n = data.days.len().max(1);
    let mut c = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..data.axis_top())
        .map_err(e)?;
    // No x ticks of plotters' own: the day labels are drawn under the bars below.
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("USD charged")
        .y_label_formatter(&|y| money(*y, decimals))
        .label_style((CHART_FONT, 13))
        .draw()
        .map_err(e)?;
    if data.days.is_empty() {
        let (x, y) = c.backend_coord(&(n as f64 / 2.0, data.axis_top() * 0.54));
        root.draw(&Text::new(
            "no charged spend in this range",
            (x, y),
            label(16),
        ))
        .map_err(e)?;
        return Ok(());
    }
    // Day labels: as many as fit without touching (every k-th day), centred under their bars.
    let per_day = c.backend_coord(&(1.0, 0.0)).0 - c.backend_coord(&(0.0, 0.0)).0;
    let label_w = text_width("2026-05-01", 12) as i32 + 10;
    let every = (label_w / per_day.max(1) + 1) as usize;
    for (i, d) in data.days.iter().enumerate().step_by(every) {
        let (x, y) = c.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(d.as_str(), (x, y + 8), label(12)))
            .map_err(e)?;
    }
    let colour = |i: usize| {
        let others = data.series.len() > CHART_MAX_AGENTS - 1 && i == CHART_MAX_AGENTS - 1;
        if others {
            GREY.to_rgba()
        } else {
            Palette99::pick(i).to_rgba()
        }
    };
    let mut below = vec![0.0; data.days.len()];
    for (si, (_, _, values)) in data.series.iter().enumerate() {
        let style = colour(si).filled();
        let bars: Vec<Rectangle<(f64, f64)>> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .map(|(i, v)| {
                Rectangle::new(
                    [(i as f64 + 0.15, below[i]), (i as f64 + 0.85, below[i] + v)],
                    style,
                )
            })
            .collect();
        c.draw_series(bars).map_err(e)?;
        for (b, v) in below.iter_mut().zip(values) {
            *b += v;
        }
    }
    // The legend, top to bottom as the segments are stacked (top of the bar first). Text is
    // anchored at its vertical centre: plotters' ab_glyph layout misplaces small glyphs such as
    // '.' in top-anchored bitmap text.
    let left = |size: u32| {
        TextStyle::from((CHART_FONT, size).into_font()).pos(Pos::new(HPos::Left, VPos::Center))
    };
    let x0 = 8;
    let mut y = 40;
    legend
        .draw(&Text::new("Total per agent", (x0, y + 6), left(14)))
        .map_err(e)?;
    y += 26;
    for (si, (name, total, _)) in data.series.iter().enumerate().rev() {
        legend
            .draw(&Rectangle::new(
                [(x0, y), (x0 + 12, y + 12)],
                colour(si).filled(),
            ))
            .map_err(e)?;
        legend
            .draw(&Text::new(
                format!("{name}  {}", money(*total, decimals)),
                (x0 + 20, y + 6),
                left(13),
            ))
            .map_err(e)?;
        y += 22;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendguard_ledger::AgentName;

    fn ev(agent: &str, model: &str, at: &str, decision: Decision, cost: Option<u64>) -> AuditEvent {
        let time: DateTime<Utc> = at.parse().expect("time");
        AuditEvent {
            id: 0,
            time,
            agent: AgentName::new(agent).expect("agent"),
            cgroup: String::new(),
            host: "api.openai.com".into(),
            model: model.into(),
            provider: "openai".into(),
            decision,
            reason: None,
            reservation_id: None,
            requested: MicroUsd::ZERO,
            reserved: MicroUsd::ZERO,
            final_cost: cost.map(MicroUsd),
            settled_at: cost.map(|_| time),
            recovered: false,
            payment: None,
            delegation: None,
        }
    }

    fn sample() -> Vec<AuditEvent> {
        vec![
            ev(
                "acme.a",
                "gpt-4o",
                "2026-05-01T10:00:00Z",
                Decision::Allowed,
                Some(1_500_000),
            ),
            ev(
                "acme.a",
                "gpt-4o",
                "2026-05-01T23:30:00Z",
                Decision::Allowed,
                Some(500_000),
            ),
            ev(
                "acme.b",
                "claude-sonnet-4-5",
                "2026-05-02T09:00:00Z",
                Decision::WouldBlock,
                Some(2_000_000),
            ),
            ev(
                "acme.b",
                "gpt-4o",
                "2026-05-02T09:10:00Z",
                Decision::Blocked,
                None,
            ),
            ev(
                "acme.a",
                "gpt-4o",
                "2026-05-03T09:00:00Z",
                Decision::Allowed,
                Some(250_000),
            ),
        ]
    }

    #[test]
    fn groups_by_agent_model_and_day_with_a_total() {
        let rows = rows(&sample(), None, &Zone::utc());
        let (g, total) = group(&rows, By::Agent);
        assert_eq!(
            g.iter()
                .map(|g| (g.key.as_str(), g.spend.0, g.requests))
                .collect::<Vec<_>>(),
            [("acme.a", 2_250_000, 3), ("acme.b", 2_000_000, 2)]
        );
        assert_eq!(
            (
                total.spend,
                total.requests,
                total.blocked,
                total.would_block
            ),
            (MicroUsd(4_250_000), 5, 1, 1)
        );
        let (g, _) = group(&rows, By::Model);
        assert_eq!(g[0].key, "claude-sonnet-4-5");
        let (g, _) = group(&rows, By::Day);
        assert_eq!(
            g.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(),
            ["2026-05-01", "2026-05-02", "2026-05-03"]
        );
        // In Berlin 23:30 UTC is already the next day; `until` cuts the rest.
        let berlin = Zone::new("Europe/Berlin").expect("zone");
        let rows = super::rows(
            &sample(),
            Some("2026-05-03T00:00:00Z".parse().expect("t")),
            &berlin,
        );
        let (g, total) = group(&rows, By::Day);
        assert_eq!(
            g.iter()
                .map(|g| (g.key.as_str(), g.spend.0))
                .collect::<Vec<_>>(),
            [("2026-05-01", 1_500_000), ("2026-05-02", 2_500_000)]
        );
        assert_eq!(total.requests, 4);
    }

    #[test]
    fn delegations_are_not_requests() {
        let mut events = sample();
        let mut d = ev(
            "acme.a.task-1",
            "",
            "2026-05-01T11:00:00Z",
            Decision::Allowed,
            Some(0),
        );
        d.delegation = Some(spendguard_ledger::DelegationAudit {
            created_by: AgentName::new("acme.a").expect("agent"),
            created: true,
            pod: None,
            set: serde_json::json!({"agent": "task-1", "total": 2.0}),
        });
        events.push(d);
        assert_eq!(
            rows(&events, None, &Zone::utc()),
            rows(&sample(), None, &Zone::utc())
        );
    }

    #[test]
    fn csv_json_and_table() {
        let rows = rows(&sample(), None, &Zone::utc());
        let csv = render(&rows, By::Agent, Format::Csv);
        assert_eq!(
            csv,
            "agent,requests,blocked,would_block,spend_usd\nacme.a,3,0,0,2.25\nacme.b,2,1,1,2.00\ntotal,5,1,1,4.25\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&rows, By::Day, Format::Json)).expect("json");
        assert_eq!(j["total"]["spend"], 4.25);
        assert_eq!(j["groups"][0]["key"], "2026-05-01");
        let t = render(&rows, By::Model, Format::Table);
        assert!(
            t.lines().next().is_some_and(|l| l.starts_with("MODEL")),
            "{t}"
        );
        assert!(
            t.lines()
                .last()
                .is_some_and(|l| l.starts_with("total") && l.ends_with("$4.25")),
            "{t}"
        );
    }

    #[test]
    fn the_chart_is_an_svg_with_every_agent_and_day() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("spend.svg");
        chart(&rows(&sample(), None, &Zone::utc()), &path, "spend per day").expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        for text in [
            "acme.a",
            "acme.b",
            "2026-05-01",
            "2026-05-03",
            "spend per day",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        assert!(svg.matches("<rect").count() >= 5, "bars: {svg}");
        // Each agent's total is in the legend.
        assert!(svg.contains("acme.a  $2.25"), "{svg}");
        assert!(matches!(
            chart(&[], &dir.path().join("x.jpg"), "t"),
            Err(ChartError::Format(_))
        ));
        if let Ok(keep) = std::env::var("SPENDGUARD_KEEP_CHART") {
            let _ = std::fs::copy(&path, keep);
        }
    }

    #[test]
    fn a_png_chart_and_an_empty_one_say_what_they_show() {
        let dir = tempfile::tempdir().expect("tmp");
        let png = dir.path().join("spend.PNG");
        chart(&rows(&sample(), None, &Zone::utc()), &png, "spend per day").expect("png");
        let bytes = std::fs::read(&png).expect("png written");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
        assert!(
            bytes.len() > 5_000,
            "with something drawn: {} bytes",
            bytes.len()
        );
        let empty = dir.path().join("empty.svg");
        chart(&[], &empty, "nothing").expect("empty chart");
        let svg = std::fs::read_to_string(&empty).expect("svg");
        assert!(svg.contains("no charged spend in this range"), "{svg}");
        assert!(svg.contains("$1.00"), "a readable axis: {svg}");
    }

    #[test]
    fn past_the_colour_limit_the_smallest_agents_share_one_bar_segment() {
        let rows: Vec<Row> = (0..CHART_MAX_AGENTS as u64 + 3)
            .map(|i| Row {
                day: "2026-05-01".into(),
                agent: format!("acme.a{i:02}"),
                model: "gpt-4o".into(),
                requests: 1,
                blocked: 0,
                would_block: 0,
                spend: MicroUsd(1_000_000 * (i + 1)),
            })
            .collect();
        let data = ChartData::new(&rows);
        assert_eq!(data.series.len(), CHART_MAX_AGENTS);
        // Biggest first (the bottom of the bar); the four smallest together last.
        assert_eq!(
            data.series[0].0,
            format!("acme.a{:02}", CHART_MAX_AGENTS + 2)
        );
        let (name, total, _) = data.series.last().expect("others");
        assert_eq!(name, "4 other agents");
        assert!(
            (total - 10.0).abs() < 1e-9,
            "1 + 2 + 3 + 4 dollars: {total}"
        );
        assert!(
            (data.top - 91.0).abs() < 1e-9,
            "the day's total: {}",
            data.top
        );
    }
}
