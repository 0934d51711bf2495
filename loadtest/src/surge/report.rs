//! A surge's report: JSON (every figure), Markdown (for people), SVG charts (at a glance).

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use muster_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::invariants::Invariant;
use super::{Config, Import, SurgePhase, Tracker, scenario};

/// The phases' own measurements, handed to [`build`].
#[derive(Debug)]
pub(crate) struct Phases {
    pub registrations: Import,
    pub pipeline_s: f64,
    pub surge: SurgePhase,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registrations {
    /// Checks and offers imported.
    pub events: u64,
    /// Until intake acknowledged the last of them.
    pub seconds: f64,
    pub per_s: f64,
    /// Each bulk of 1,000.
    pub bulk_p50_ms: f64,
    pub bulk_p99_ms: f64,
    /// Until the projections had applied the last of them (the whole pipeline).
    pub pipeline_seconds: f64,
    pub pipeline_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Surge {
    pub seconds: f64,
    pub needs_acknowledged: u64,
    /// Needs acknowledged per second over the surge.
    pub sustained_per_s: f64,
    /// The busiest second.
    pub peak_per_s: u64,
    /// From a need's scheduled time to intake's acknowledgement.
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    /// Needs whose first proposal was seen during the run: the end-to-end and matcher-lag
    /// percentiles are over these (the rest were not matched before the run ended).
    pub end_to_end_measured: u64,
    /// From a need's scheduled time to its first proposal seen on `WatchIncident`.
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    /// From acknowledgement to the first proposal seen: the matcher's and projections' share.
    pub matcher_lag_p50_ms: f64,
    pub matcher_lag_p99_ms: f64,
    /// The most events the projections were behind intake at a one-second sample.
    pub max_projection_lag_events: u64,
    /// The most the reporting clients fell behind the schedule.
    pub max_behind_schedule_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub matchable: u64,
    /// Matchable needs a volunteer holds at the end (proposed, accepted or completed).
    pub matched: u64,
    pub fill_rate: f64,
    pub unmatchable_by_design: u64,
    pub proposals: u64,
    pub accepted: u64,
    pub declined: u64,
    pub ignored: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub completed: u64,
    pub request_errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeToMatch {
    pub urgency: u32,
    pub needs: u64,
    pub matched: u64,
    /// Wall clock, acknowledgement to first proposal.
    pub p50_s: f64,
    pub p90_s: f64,
    /// The projections' own figure, in log time.
    pub dashboard_p50_s: f64,
    pub dashboard_p90_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub providers: u64,
    /// Share of registered providers offered at least one task.
    pub offered_share: f64,
    /// Providers who accepted at least one task.
    pub with_tasks: u64,
    /// Gini of accepted tasks over providers who were offered a task (0: perfectly even).
    pub gini_tasks: f64,
    pub max_tasks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondFigures {
    pub t: u64,
    pub needs_acknowledged: u64,
    pub events_acknowledged: u64,
    pub proposals: u64,
    pub accepted: u64,
    /// End-to-end latency of the needs scheduled in this second.
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub projection_lag: u64,
}

/// Everything one surge measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub incident: String,
    pub seed: u64,
    pub needs: u64,
    pub providers: u64,
    pub clients: u64,
    pub batch: u64,
    pub registrations: Registrations,
    pub surge: Surge,
    pub outcome: Outcome,
    pub time_to_match: Vec<TimeToMatch>,
    pub volunteers: Spread,
    pub needs_by_status: Vec<(String, i64)>,
    pub rounds: u64,
    pub invariants: Vec<Invariant>,
    pub timeline: Vec<SecondFigures>,
    /// CPU seconds by process over the run (when known).
    pub cpu: Vec<(String, f64)>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

/// Latencies in microseconds, up to an hour.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

pub(crate) fn build(
    config: &Config,
    plan: &scenario::Plan,
    t: &Tracker,
    phases: Phases,
    dashboard: &pb::Dashboard,
    invariants: Vec<Invariant>,
) -> Report {
    let mut e2e = histogram();
    let mut lag = histogram();
    let mut by_second: std::collections::BTreeMap<u64, Histogram<u64>> = Default::default();
    let mut by_urgency: std::collections::BTreeMap<u32, (u64, Histogram<u64>)> = Default::default();
    for n in &t.needs {
        let entry = by_urgency
            .entry(n.urgency)
            .or_insert_with(|| (0, histogram()));
        entry.0 += 1;
        if let Some(p) = n.proposed {
            let total = p.saturating_sub(n.scheduled).as_micros() as u64;
            e2e.saturating_record(total);
            by_second
                .entry(n.scheduled.as_secs())
                .or_insert_with(histogram)
                .saturating_record(total);
            if let Some(a) = n.acked {
                let l = p.saturating_sub(a).as_micros() as u64;
                lag.saturating_record(l);
                entry.1.saturating_record(l);
            }
        }
    }
    let dash_ttm = |u: u32| {
        dashboard
            .time_to_match
            .iter()
            .find(|x| x.urgency == u)
            .map_or((0.0, 0.0), |x| (x.p50_s, x.p90_s))
    };
    let time_to_match = by_urgency
        .into_iter()
        .map(|(u, (needs, h))| {
            let (d50, d90) = dash_ttm(u);
            TimeToMatch {
                urgency: u,
                needs,
                matched: h.len(),
                p50_s: ms(&h, 0.5) / 1_000.0,
                p90_s: ms(&h, 0.9) / 1_000.0,
                dashboard_p50_s: d50,
                dashboard_p90_s: d90,
            }
        })
        .collect();
    let last = t.seconds.keys().next_back().copied().unwrap_or(0);
    let timeline: Vec<SecondFigures> = (0..=last)
        .map(|s| {
            let f = t.seconds.get(&s).copied().unwrap_or_default();
            let h = by_second.get(&s);
            SecondFigures {
                t: s,
                needs_acknowledged: f.needs_acked,
                events_acknowledged: f.events_acked,
                proposals: f.proposals,
                accepted: f.accepted,
                end_to_end_p50_ms: h.map_or(0.0, |h| ms(h, 0.5)),
                end_to_end_p99_ms: h.map_or(0.0, |h| ms(h, 0.99)),
                projection_lag: f.projection_lag,
            }
        })
        .collect();
    let matchable = t.matchable();
    let offered: Vec<u64> = t
        .offered
        .iter()
        .map(|v| t.tasks.get(v).copied().unwrap_or(0))
        .collect();
    let r = &phases.registrations;
    let s = &phases.surge;
    Report {
        scenario: plan.scenario.name().into(),
        incident: config.incident.clone(),
        seed: config.seed,
        needs: plan.needs.len() as u64,
        providers: plan.providers as u64,
        clients: config.clients as u64,
        batch: config.batch as u64,
        registrations: Registrations {
            events: r.events,
            seconds: r.seconds,
            per_s: r.events as f64 / r.seconds.max(1e-9),
            bulk_p50_ms: ms(&r.latency, 0.5),
            bulk_p99_ms: ms(&r.latency, 0.99),
            pipeline_seconds: phases.pipeline_s,
            pipeline_per_s: r.events as f64 / phases.pipeline_s.max(1e-9),
        },
        surge: Surge {
            seconds: s.seconds,
            needs_acknowledged: s.acked,
            sustained_per_s: s.acked as f64 / s.seconds.max(1e-9),
            peak_per_s: t.seconds.values().map(|f| f.needs_acked).max().unwrap_or(0),
            ack_p50_ms: ms(&s.ack_latency, 0.5),
            ack_p99_ms: ms(&s.ack_latency, 0.99),
            end_to_end_measured: e2e.len(),
            end_to_end_p50_ms: ms(&e2e, 0.5),
            end_to_end_p99_ms: ms(&e2e, 0.99),
            matcher_lag_p50_ms: ms(&lag, 0.5),
            matcher_lag_p99_ms: ms(&lag, 0.99),
            max_projection_lag_events: t
                .seconds
                .values()
                .map(|f| f.projection_lag)
                .max()
                .unwrap_or(0),
            max_behind_schedule_ms: t.behind.as_secs_f64() * 1_000.0,
        },
        outcome: Outcome {
            matchable,
            matched: t.matched_now(),
            fill_rate: t.matched_now() as f64 / matchable.max(1) as f64,
            unmatchable_by_design: plan.needs.len() as u64 - matchable,
            proposals: t.counts.proposals,
            accepted: t.counts.accepted,
            declined: t.counts.declined,
            ignored: t.counts.ignored,
            expired: t.counts.expired,
            cancelled: t.counts.cancelled,
            completed: t.counts.completed,
            request_errors: t.counts.errors,
            first_error: t.counts.first_error.clone(),
        },
        time_to_match,
        volunteers: Spread {
            providers: plan.providers as u64,
            offered_share: t.offered.len() as f64 / plan.providers.max(1) as f64,
            with_tasks: t.tasks.values().filter(|&&n| n > 0).count() as u64,
            gini_tasks: crate::matcher::gini(offered),
            max_tasks: t.tasks.values().copied().max().unwrap_or(0),
        },
        needs_by_status: dashboard
            .needs_by_status
            .iter()
            .map(|c| (c.key.clone(), c.count))
            .collect(),
        rounds: dashboard.rounds,
        invariants,
        timeline,
        cpu: Vec::new(),
    }
}

impl Report {
    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let s = &self.surge;
        let o = &self.outcome;
        let held = self.invariants.iter().filter(|i| i.held).count();
        format!(
            "{}: registrations {:.0}/s acknowledged, {:.0}/s through the pipeline; needs {:.0}/s sustained (peak {}/s); \
             end-to-end p50 {:.0} ms p99 {:.0} ms (of {} proposed); matched {}/{} ({:.1}%); invariants {held}/{} held",
            self.scenario,
            self.registrations.per_s,
            self.registrations.pipeline_per_s,
            s.sustained_per_s,
            s.peak_per_s,
            s.end_to_end_p50_ms,
            s.end_to_end_p99_ms,
            s.end_to_end_measured,
            o.matched,
            o.matchable,
            o.fill_rate * 100.0,
            self.invariants.len()
        )
    }

    /// Writes `<scenario>.json`, `<scenario>.md` and three SVG charts into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let name = &self.scenario;
        let files = [
            (format!("{name}.json"), serde_json::to_string_pretty(self)?),
            (format!("{name}.md"), self.markdown()),
            (format!("{name}-throughput.svg"), self.throughput_svg()),
            (format!("{name}-latency.svg"), self.latency_svg()),
            (
                format!("{name}-time-to-match.svg"),
                self.time_to_match_svg(),
            ),
        ];
        let mut out = Vec::new();
        for (file, body) in files {
            let path = dir.join(&file);
            std::fs::write(&path, body)?;
            out.push(path.display().to_string());
        }
        Ok(out)
    }

    pub fn markdown(&self) -> String {
        let r = &self.registrations;
        let s = &self.surge;
        let o = &self.outcome;
        let v = &self.volunteers;
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# Surge: {} (incident `{}`, seed {})\n",
            self.scenario, self.incident, self.seed
        );
        let _ = writeln!(
            m,
            "{} needs from {} clients ({} per request), {} volunteers and organisations.\n",
            self.needs, self.clients, self.batch, self.providers
        );
        m.push_str("## Invariants\n\n| invariant | held | checked | detail |\n|---|---|---|---|\n");
        for i in &self.invariants {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                i.name,
                if i.held { "yes" } else { "**NO**" },
                i.checked,
                i.detail.replace('|', "\\|")
            );
        }
        m.push_str("\n## Ingest\n\n| figure | value |\n|---|---|\n");
        let rows = [
            ("registrations (checks and offers)", format!("{}", r.events)),
            (
                "registrations acknowledged per second",
                format!("{:.0} ({:.2} s)", r.per_s, r.seconds),
            ),
            (
                "bulk of 1,000, p50 / p99",
                format!("{:.0} / {:.0} ms", r.bulk_p50_ms, r.bulk_p99_ms),
            ),
            (
                "registrations through the pipeline (into the read models) per second",
                format!("{:.0} ({:.2} s)", r.pipeline_per_s, r.pipeline_seconds),
            ),
            (
                "needs acknowledged",
                format!("{} in {:.1} s", s.needs_acknowledged, s.seconds),
            ),
            (
                "needs per second, sustained / busiest second",
                format!("{:.0} / {}", s.sustained_per_s, s.peak_per_s),
            ),
            (
                "need acknowledged, p50 / p99 (from its scheduled time)",
                format!("{:.1} / {:.1} ms", s.ack_p50_ms, s.ack_p99_ms),
            ),
            (
                "**need reported → proposal visible (end to end), p50 / p99**",
                format!(
                    "**{:.0} / {:.0} ms** (over the {} needs proposed during the run)",
                    s.end_to_end_p50_ms, s.end_to_end_p99_ms, s.end_to_end_measured
                ),
            ),
            (
                "acknowledged → proposal visible (matcher lag), p50 / p99",
                format!(
                    "{:.0} / {:.0} ms",
                    s.matcher_lag_p50_ms, s.matcher_lag_p99_ms
                ),
            ),
            (
                "projection lag, most at a 1 s sample",
                format!("{} events", s.max_projection_lag_events),
            ),
            (
                "clients behind schedule, most",
                format!("{:.0} ms", s.max_behind_schedule_ms),
            ),
        ];
        for (k, val) in rows {
            let _ = writeln!(m, "| {k} | {val} |");
        }
        let _ = writeln!(
            m,
            "\n![throughput]({0}-throughput.svg)\n\n![latency]({0}-latency.svg)\n",
            self.scenario
        );
        m.push_str("## Matching\n\n| figure | value |\n|---|---|\n");
        let rows = [
            (
                "fill rate (matchable needs a volunteer holds: proposed, accepted or done)",
                format!(
                    "{:.1}% ({} of {})",
                    o.fill_rate * 100.0,
                    o.matched,
                    o.matchable
                ),
            ),
            (
                "unmatchable by design",
                format!("{}", o.unmatchable_by_design),
            ),
            (
                "proposals / accepted / declined / ignored",
                format!(
                    "{} / {} / {} / {}",
                    o.proposals, o.accepted, o.declined, o.ignored
                ),
            ),
            (
                "expired / cancelled / completed",
                format!("{} / {} / {}", o.expired, o.cancelled, o.completed),
            ),
            ("rounds", format!("{}", self.rounds)),
            (
                "volunteers offered a task",
                format!("{:.1}% of {}", v.offered_share * 100.0, v.providers),
            ),
            (
                "tasks per volunteer offered one: Gini / most",
                format!("{:.3} / {}", v.gini_tasks, v.max_tasks),
            ),
            (
                "request errors",
                format!(
                    "{}{}",
                    o.request_errors,
                    o.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ),
            ),
        ];
        for (k, val) in rows {
            let _ = writeln!(m, "| {k} | {val} |");
        }
        m.push_str("\n### Time to match by urgency\n\n| urgency | needs | matched | p50 s | p90 s | dashboard p50 s (log time) | dashboard p90 s |\n|---|---|---|---|---|---|---|\n");
        for u in &self.time_to_match {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                u.urgency,
                u.needs,
                u.matched,
                u.p50_s,
                u.p90_s,
                u.dashboard_p50_s,
                u.dashboard_p90_s
            );
        }
        let _ = writeln!(m, "\n![time to match]({}-time-to-match.svg)", self.scenario);
        if !self.cpu.is_empty() {
            m.push_str("\n## CPU\n\n");
            for (p, c) in &self.cpu {
                let _ = writeln!(m, "- {p}: {c:.1} s");
            }
        }
        m
    }

    fn throughput_svg(&self) -> String {
        let pts = |f: fn(&SecondFigures) -> u64| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .map(|s| (s.t as f64, f(s) as f64))
                .collect()
        };
        line_chart(
            &format!("{}: throughput per second", self.scenario),
            "seconds",
            "per second",
            &[
                (
                    "events acknowledged",
                    "#1f77b4",
                    pts(|s| s.events_acknowledged),
                ),
                (
                    "needs acknowledged",
                    "#2ca02c",
                    pts(|s| s.needs_acknowledged),
                ),
                ("proposals seen", "#ff7f0e", pts(|s| s.proposals)),
                ("accepted", "#9467bd", pts(|s| s.accepted)),
            ],
        )
    }

    fn latency_svg(&self) -> String {
        let pts = |f: fn(&SecondFigures) -> f64| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .filter(|s| s.end_to_end_p99_ms > 0.0)
                .map(|s| (s.t as f64, f(s)))
                .collect()
        };
        line_chart(
            &format!(
                "{}: need reported → proposal visible, by second reported",
                self.scenario
            ),
            "seconds",
            "ms",
            &[
                ("p50", "#2ca02c", pts(|s| s.end_to_end_p50_ms)),
                ("p99", "#d62728", pts(|s| s.end_to_end_p99_ms)),
            ],
        )
    }

    fn time_to_match_svg(&self) -> String {
        let groups: Vec<(String, Vec<f64>)> = self
            .time_to_match
            .iter()
            .map(|u| (format!("urgency {}", u.urgency), vec![u.p50_s, u.p90_s]))
            .collect();
        bar_chart(
            &format!("{}: time to match by urgency (s)", self.scenario),
            &[("p50", "#1f77b4"), ("p90", "#ff7f0e")],
            &groups,
        )
    }
}

const W: f64 = 760.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn frame(title: &str, x_label: &str, y_label: &str, y_max: f64, x_max: f64, svg: &mut String) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        (LEFT + W - RIGHT) / 2.0,
        escape(title)
    );
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    for k in 0..=5 {
        let v = y_max * f64::from(k) / 5.0;
        let y = y0 - (y0 - y1) * f64::from(k) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            label(v)
        );
    }
    if x_max > 0.0 {
        for k in 0..=5 {
            let v = x_max * f64::from(k) / 5.0;
            let x = x0 + (x1 - x0) * f64::from(k) / 5.0;
            let _ = writeln!(
                svg,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + 18.0,
                label(v)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"##,
        (x0 + x1) / 2.0,
        H - 12.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn legend(entries: &[(&str, &str)], svg: &mut String) {
    for (k, (name, colour)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * k as f64;
        let x = W - RIGHT + 14.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            x + 18.0,
            y,
            escape(name)
        );
    }
}

/// One line of a chart: its name, colour and points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Lines over a shared x axis (seconds).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let x_max = nice(
        series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let y_max = nice(
        series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let mut svg = String::new();
    frame(title, x_label, y_label, y_max, x_max, &mut svg);
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    for (_, colour, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    x0 + (x1 - x0) * x / x_max,
                    y0 - (y0 - y1) * y / y_max
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
    }
    let entries: Vec<(&str, &str)> = series.iter().map(|s| (s.0, s.1)).collect();
    legend(&entries, &mut svg);
    svg.push_str("</svg>\n");
    svg
}

/// Grouped bars: one group per label, one bar per series.
pub fn bar_chart(title: &str, series: &[(&str, &str)], groups: &[(String, Vec<f64>)]) -> String {
    let y_max = nice(
        groups
            .iter()
            .flat_map(|g| g.1.iter().copied())
            .fold(0.0, f64::max),
    );
    let mut svg = String::new();
    frame(title, "", "seconds", y_max, 0.0, &mut svg);
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let group_w = (x1 - x0) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, (name, values)) in groups.iter().enumerate() {
        let gx = x0 + group_w * g as f64 + group_w * 0.1;
        for (k, v) in values.iter().enumerate() {
            let h = (y0 - y1) * v / y_max;
            let colour = series.get(k).map_or("#888", |s| s.1);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
                gx + bar_w * k as f64,
                y0 - h,
                bar_w - 2.0,
                h,
                label(*v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + group_w * 0.4,
            y0 + 18.0,
            escape(name)
        );
    }
    legend(series, &mut svg);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_to_one_two_or_five() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(17.0), 20.0);
        assert_eq!(nice(4_100.0), 5_000.0);
        assert_eq!(nice(10_000.0), 10_000.0);
    }

    #[test]
    fn charts_place_points_inside_the_plot_and_escape_text() {
        let svg = line_chart(
            "a <b> & c",
            "s",
            "n",
            &[("x", "#000", vec![(0.0, 0.0), (10.0, 100.0)])],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        // (0,0) at the bottom-left corner of the plot, (10,100) at the top-right.
        assert!(svg.contains(&format!("{LEFT:.1},{:.1}", H - BOTTOM)));
        assert!(svg.contains(&format!("{:.1},{TOP:.1}", W - RIGHT)));
        let bars = bar_chart("t", &[("p50", "#111")], &[("u1".into(), vec![2.0])]);
        assert_eq!(
            bars.matches("<rect x=").count(),
            2,
            "one bar and one legend swatch"
        );
    }
}
