//! `spendguard top`: the live terminal view — one row per agent (tree-indented), its spend rate,
//! the binding budget, reservations in flight and the last minute's requests and blocks — redrawn
//! every second from the agent's `top` snapshot (see `control::snapshot`).
//!
//! Keys: `s` next sort key, `r` reverse, `/` filter (type, Enter to keep, Esc to clear), `q` quit.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::Frame;
use spendguard_ledger::AgentState;
use spendguard_pricing::MicroUsd;

use crate::control::snapshot::{Row, Snapshot};

/// How often the view asks the agent for a new frame.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// The agent tree (names, parents before children), indented.
    #[default]
    Tree,
    /// Spend rate ($/min over the last minute), highest first.
    Rate,
    /// Spent in the binding period, highest first.
    Spent,
    /// Remaining in the binding period, least first.
    Remaining,
    /// Blocks (and observed blocks) in the last minute, most first.
    Blocks,
    /// Requests in the last minute, most first.
    Requests,
}

impl SortKey {
    const ALL: [SortKey; 6] = [
        SortKey::Tree,
        SortKey::Rate,
        SortKey::Spent,
        SortKey::Remaining,
        SortKey::Blocks,
        SortKey::Requests,
    ];

    fn name(self) -> &'static str {
        match self {
            SortKey::Tree => "tree",
            SortKey::Rate => "rate",
            SortKey::Spent => "spent",
            SortKey::Remaining => "remaining",
            SortKey::Blocks => "blocks",
            SortKey::Requests => "requests",
        }
    }

    fn next(self) -> SortKey {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// How the rows are shown.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub sort: SortKey,
    pub reverse: bool,
    /// Only agents whose name contains this.
    pub filter: String,
    /// The filter is being typed.
    pub editing: bool,
}

/// The rows of `snap` as `view` shows them: filtered, sorted.
pub fn rows<'a>(snap: &'a Snapshot, view: &View) -> Vec<&'a Row> {
    let mut v: Vec<&Row> = snap
        .agents
        .iter()
        .filter(|r| view.filter.is_empty() || r.agent.contains(view.filter.as_str()))
        .collect();
    let desc = |a: u64, b: u64| b.cmp(&a);
    match view.sort {
        SortKey::Tree => v.sort_by(|a, b| a.agent.cmp(&b.agent)),
        SortKey::Rate => v.sort_by(|a, b| desc(a.rate_per_min.0, b.rate_per_min.0)),
        SortKey::Spent => v.sort_by(|a, b| desc(a.spent.0, b.spent.0)),
        SortKey::Remaining => v.sort_by_key(|r| r.remaining.map_or(u64::MAX, |m| m.0)),
        SortKey::Blocks => v.sort_by(|a, b| {
            desc(
                a.blocked_1m + a.would_block_1m,
                b.blocked_1m + b.would_block_1m,
            )
        }),
        SortKey::Requests => v.sort_by(|a, b| desc(a.requests_1m, b.requests_1m)),
    }
    if view.reverse {
        v.reverse();
    }
    v
}

const HEADERS: [&str; 11] = [
    "AGENT",
    "MODE",
    "STATE",
    "$/MIN",
    "SPENT",
    "LIMIT",
    "REMAINING",
    "PERIOD",
    "IN FLIGHT",
    "REQ/1m",
    "BLK/1m",
];

fn money(m: MicroUsd) -> String {
    // Cents are enough on screen, except for small numbers.
    if m.0 >= 100 * MicroUsd::PER_USD {
        format!("${}", m.0 / MicroUsd::PER_USD)
    } else {
        m.to_string()
    }
}

/// The cells of one row.
fn cells(r: &Row, indent: bool) -> [String; 11] {
    let name = if indent {
        format!(
            "{}{}",
            "  ".repeat(r.depth),
            r.agent.rsplit('.').next().unwrap_or(&r.agent)
        )
    } else {
        r.agent.clone()
    };
    let state = if r.paused {
        "paused".to_string()
    } else {
        serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let blocks = if r.would_block_1m > 0 {
        format!("{} (+{} obs)", r.blocked_1m, r.would_block_1m)
    } else {
        r.blocked_1m.to_string()
    };
    let remaining = match (r.remaining, r.minutes_left) {
        (None, _) => "unlimited".to_string(),
        (Some(m), Some(left)) if left < 600 => format!("{} ({left}m)", money(m)),
        (Some(m), _) => money(m),
    };
    [
        name,
        r.mode.as_str().to_string(),
        state,
        money(r.rate_per_min),
        money(r.spent),
        r.limit.map_or("-".into(), money),
        remaining,
        r.binding_period
            .map_or("-".into(), |p| p.as_str().to_string()),
        money(r.reserved),
        r.requests_1m.to_string(),
        blocks,
    ]
}

fn style(r: &Row) -> Style {
    if r.paused || r.status == AgentState::Expired {
        Style::default().fg(Color::Magenta)
    } else if r.blocked_1m > 0 || r.status == AgentState::Exhausted {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if r.would_block_1m > 0 {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    }
}

/// The first header line: where, when, and the node's totals over the last minute.
fn summary(snap: &Snapshot) -> String {
    let roots = snap.agents.iter().filter(|r| r.depth == 0);
    let (mut rate, mut req, mut blk, mut obs) = (MicroUsd::ZERO, 0, 0, 0);
    for r in roots {
        rate = rate.saturating_add(r.rate_per_min);
        req += r.requests_1m;
        blk += r.blocked_1m;
        obs += r.would_block_1m;
    }
    format!(
        "spendguard top — {}{} — {} agents — {}/min, {req} requests, {blk} blocked, {obs} would block (last {} s)",
        snap.time.format("%Y-%m-%d %H:%M:%S UTC"),
        snap.node.as_deref().map(|n| format!(" — node {n}")).unwrap_or_default(),
        snap.agents.len(),
        money(rate),
        snap.window_secs,
    )
}

fn keys(view: &View) -> String {
    let filter = if view.editing {
        format!("filter: {}▏ (Enter keep, Esc clear)", view.filter)
    } else if view.filter.is_empty() {
        "/ filter".to_string()
    } else {
        format!("filter: {} (/ edit)", view.filter)
    };
    format!(
        "sort: {}{} (s next, r reverse) — {filter} — q quit",
        view.sort.name(),
        if view.reverse { " reversed" } else { "" }
    )
}

const WIDTHS: [Constraint; 11] = [
    Constraint::Min(24),
    Constraint::Length(8),
    Constraint::Length(10),
    Constraint::Length(10),
    Constraint::Length(11),
    Constraint::Length(10),
    Constraint::Length(16),
    Constraint::Length(8),
    Constraint::Length(10),
    Constraint::Length(7),
    Constraint::Length(14),
];

/// Draws one frame. `error` is the last failure to fetch a frame (the view keeps the last one).
pub fn render(f: &mut Frame, snap: &Snapshot, view: &View, error: Option<&str>) {
    let [head, body] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(f.area());
    let mut lines = vec![Line::from(summary(snap)), Line::from(keys(view))];
    if let Some(e) = error {
        lines.push(Line::styled(
            format!("cannot refresh: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    f.render_widget(Paragraph::new(lines), head);
    let indent = view.sort == SortKey::Tree;
    let shown = rows(snap, view);
    let table_rows = shown
        .iter()
        .map(|r| TableRow::new(cells(r, indent).map(Cell::from)).style(style(r)));
    let table = Table::new(table_rows, WIDTHS).header(
        TableRow::new(HEADERS.map(Cell::from))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
    );
    f.render_widget(table, body);
}

/// One frame as plain text (`top --once` without `--json`).
pub fn text(snap: &Snapshot, view: &View) -> String {
    let indent = view.sort == SortKey::Tree;
    let mut table: Vec<[String; 11]> = vec![HEADERS.map(str::to_string)];
    table.extend(rows(snap, view).iter().map(|r| cells(r, indent)));
    let mut widths = [0usize; 11];
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = summary(snap);
    out.push('\n');
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What a key does to the view; `false` = quit.
pub fn key(view: &mut View, code: KeyCode) -> bool {
    if view.editing {
        match code {
            KeyCode::Enter => view.editing = false,
            KeyCode::Esc => {
                view.editing = false;
                view.filter.clear();
            }
            KeyCode::Backspace => {
                view.filter.pop();
            }
            KeyCode::Char(c) => view.filter.push(c),
            _ => {}
        }
        return true;
    }
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('s') => view.sort = view.sort.next(),
        KeyCode::Char('r') => view.reverse = !view.reverse,
        KeyCode::Char('/') => view.editing = true,
        _ => {}
    }
    true
}

/// The interactive view: fetches a frame every [`REFRESH`] and redraws until `q`.
pub fn run(
    mut fetch: impl FnMut() -> Result<Snapshot, String>,
    mut view: View,
) -> std::io::Result<()> {
    let mut snap = fetch().map_err(std::io::Error::other)?;
    let mut terminal = ratatui::init();
    let mut error: Option<String> = None;
    let mut next = Instant::now() + REFRESH;
    let result = loop {
        if let Err(e) = terminal.draw(|f| render(f, &snap, &view, error.as_deref())) {
            break Err(e);
        }
        let wait = next.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    if !key(&mut view, k.code) {
                        break Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        if Instant::now() >= next {
            match fetch() {
                Ok(s) => {
                    snap = s;
                    error = None;
                }
                Err(e) => error = Some(e),
            }
            next = Instant::now() + REFRESH;
        }
    };
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use spendguard_ledger::{Mode, Period};

    fn row(agent: &str, rate: u64, blocked: u64, obs: u64) -> Row {
        Row {
            agent: agent.into(),
            depth: agent.matches('.').count(),
            status: AgentState::Active,
            mode: Mode::Enforce,
            paused: false,
            tz: "UTC".into(),
            rate_per_min: MicroUsd(rate),
            binding_period: Some(Period::Daily),
            spent: MicroUsd(2_500_000),
            limit: Some(MicroUsd(10_000_000)),
            remaining: Some(MicroUsd(7_500_000)),
            resets: None,
            reserved: MicroUsd(40_000),
            requests_1m: 12,
            blocked_1m: blocked,
            would_block_1m: obs,
            minutes_left: (rate > 0).then(|| 7_500_000 / rate),
        }
    }

    fn snap() -> Snapshot {
        let mut obs = row("acme.research.bot", 500_000, 0, 3);
        obs.mode = Mode::Observe;
        let mut paused = row("zeta", 0, 4, 0);
        paused.paused = true;
        paused.remaining = None;
        paused.binding_period = None;
        paused.limit = None;
        Snapshot {
            time: "2026-05-03T12:00:00Z".parse().expect("time"),
            node: Some("node-a".into()),
            window_secs: 60,
            agents: vec![
                row("acme", 600_000, 1, 3),
                row("acme.research", 500_000, 0, 3),
                obs,
                row("acme.web", 100_000, 1, 0),
                paused,
            ],
        }
    }

    fn screen(view: &View) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(150, 12)).expect("terminal");
        t.draw(|f| render(f, &snap(), view, None)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn a_frame_shows_the_tree_rates_budgets_and_blocks() {
        let lines = screen(&View::default());
        let all = lines.join("\n");
        assert!(lines[0].contains("spendguard top — 2026-05-03 12:00:00 UTC — node node-a — 5 agents — $0.60/min, 24 requests, 5 blocked, 3 would block"), "{all}");
        assert!(lines[1].contains("sort: tree"), "{all}");
        assert!(lines[3].starts_with("AGENT"), "{all}");
        // Tree-indented, parents first.
        let at = |name: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name:?} in\n{all}"))
        };
        assert!(
            at("acme ") < at("  research ") && at("  research ") < at("    bot "),
            "{all}"
        );
        let bot = &lines[at("    bot ")];
        for cell in [
            "observe",
            "active",
            "$0.50",
            "$2.50",
            "$10.00",
            "$7.50 (15m)",
            "daily",
            "$0.04",
            "12",
            "0 (+3 obs)",
        ] {
            assert!(bot.contains(cell), "{cell:?} missing in {bot:?}");
        }
        let zeta = &lines[at("zeta ")];
        assert!(
            zeta.contains("paused") && zeta.contains("unlimited"),
            "{zeta}"
        );
    }

    #[test]
    fn sort_keys_and_the_filter_change_what_is_shown() {
        let mut view = View::default();
        assert!(key(&mut view, KeyCode::Char('s')));
        assert_eq!(view.sort, SortKey::Rate);
        let lines = screen(&view);
        let first = &lines[4];
        assert!(
            first.starts_with("acme "),
            "rate sort, full names: {lines:?}"
        );
        assert!(lines[5].starts_with("acme.research "), "{lines:?}");
        // Filter: type "web", Enter.
        key(&mut view, KeyCode::Char('/'));
        for c in "web".chars() {
            key(&mut view, KeyCode::Char(c));
        }
        key(&mut view, KeyCode::Enter);
        let lines = screen(&view);
        assert!(lines[1].contains("filter: web"), "{lines:?}");
        assert!(lines[4].starts_with("acme.web "), "{lines:?}");
        assert!(lines[5].trim().is_empty(), "only the match: {lines:?}");
        assert!(!key(&mut view, KeyCode::Char('q')));
        // The plain-text frame (`--once`) has the same rows.
        let txt = text(&snap(), &View::default());
        assert!(
            txt.lines()
                .any(|l| l.starts_with("    bot") && l.contains("0 (+3 obs)")),
            "{txt}"
        );
    }
}
