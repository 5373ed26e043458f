//! `spendguard report`: spend from the audit log, grouped by agent, model or day, as a table, CSV
//! or JSON, and a chart of spend per day per agent (SVG).
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
    for e in events.iter().filter(|e| until.is_none_or(|u| e.time < u)) {
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
    #[error("--chart {0}: only .svg charts are drawn (open it in a browser, or convert it)")]
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

/// Spend per day per agent as stacked bars (one colour per agent, a legend), written to `path`
/// (`.svg`).
pub fn chart(rows: &[Row], path: &Path, title: &str) -> Result<(), ChartError> {
    use plotters::prelude::*;
    let shown = path.display().to_string();
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(ChartError::Format(shown));
    }
    let fail = |e: &dyn std::fmt::Display| ChartError::Draw {
        path: shown.clone(),
        detail: e.to_string(),
    };
    register_font().map_err(|e| fail(&e))?;
    // day → agent → dollars (display only).
    let mut days: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    let mut agents: Vec<&str> = Vec::new();
    for r in rows {
        *days.entry(&r.day).or_default().entry(&r.agent).or_default() += r.spend.as_usd_f64();
        if !agents.contains(&r.agent.as_str()) {
            agents.push(&r.agent);
        }
    }
    agents.sort_unstable();
    let day_list: Vec<&str> = days.keys().copied().collect();
    let top = days
        .values()
        .map(|a| a.values().sum::<f64>())
        .fold(0.0_f64, f64::max)
        .max(0.000_001)
        * 1.3; // headroom for the legend
               // Enough decimals that the axis labels differ (small spends are fractions of a cent).
    let decimals = match top {
        t if t >= 1.0 => 2,
        t if t >= 0.1 => 3,
        t if t >= 0.01 => 4,
        _ => 6,
    };
    let n = day_list.len().max(1);
    let width = (160 + 60 * n as u32).clamp(640, 2400);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)
        .map_err(|e| fail(&e))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(31))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor()).abs() < 1e-9 {
                String::new()
            } else {
                day_list.get(i).map(|d| d.to_string()).unwrap_or_default()
            }
        })
        .y_desc("USD")
        .y_label_formatter(&|y| format!("${y:.decimals$}"))
        .draw()
        .map_err(|e| fail(&e))?;
    // Day labels centred under their bars.
    c.configure_mesh()
        .disable_mesh()
        .disable_y_axis()
        .x_labels(0)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, d) in day_list.iter().enumerate() {
        let (x, y) = c.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            d.to_string(),
            (x - 30, y + 8),
            ("sans-serif", 12),
        ))
        .map_err(|e| fail(&e))?;
    }
    for (ai, agent) in agents.iter().enumerate() {
        let colour = Palette99::pick(ai).to_rgba().filled();
        let bars: Vec<Rectangle<(f64, f64)>> = day_list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let per = &days[d];
                let v = *per.get(agent)?;
                let below: f64 = agents[..ai].iter().filter_map(|a| per.get(a)).sum();
                Some(Rectangle::new(
                    [(i as f64 + 0.15, below), (i as f64 + 0.85, below + v)],
                    colour,
                ))
            })
            .collect();
        c.draw_series(bars)
            .map_err(|e| fail(&e))?
            .label(*agent)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
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
        assert!(matches!(
            chart(&[], &dir.path().join("x.png"), "t"),
            Err(ChartError::Format(_))
        ));
        if let Ok(keep) = std::env::var("SPENDGUARD_KEEP_CHART") {
            let _ = std::fs::copy(&path, keep);
        }
    }
}
