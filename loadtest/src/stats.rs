//! Throughput and latency figures of one benchmark phase.

use std::time::Duration;

use hdrhistogram::Histogram;

/// What one phase measured.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub events: u64,
    pub elapsed: Duration,
    /// Latency of each operation (a request, a batch), in microseconds.
    pub latency: Histogram<u64>,
    pub errors: u64,
    /// CPU seconds each process used during the phase.
    pub cpu: Vec<(&'static str, f64)>,
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Measures the CPU that named processes use between `start` and `finish`.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    before: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    pub fn start(processes: &[(&'static str, u32)]) -> Self {
        Self {
            before: processes
                .iter()
                .filter_map(|(name, pid)| cpu_seconds(*pid).map(|s| (*name, *pid, s)))
                .collect(),
        }
    }

    pub fn finish(self, phase: &mut Phase) {
        phase.cpu = self
            .before
            .into_iter()
            .filter_map(|(name, pid, s0)| cpu_seconds(pid).map(|s1| (name, s1 - s0)))
            .collect();
    }
}

impl Phase {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            events: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            errors: 0,
            cpu: Vec::new(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.latency.record(us.min(600_000_000));
    }

    pub fn merge(&mut self, other: &Phase) {
        let _ = self.latency.add(&other.latency);
        self.events += other.events;
        self.errors += other.errors;
    }

    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// CPU microseconds per event used by each measured process.
    pub fn cpu_per_event(&self) -> String {
        if self.events == 0 || self.cpu.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, s)| format!("{name} {:.1}", s * 1e6 / self.events as f64))
            .collect();
        format!("cpu us/event: {}", parts.join(", "))
    }

    pub fn line(&self) -> String {
        format!(
            "{:<46} {:>10.0} ev/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} events, {} errors, {:.1}s)  {}",
            self.name,
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.events,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.cpu_per_event()
        )
    }

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |",
            self.name,
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.cpu_per_event().trim_start_matches("cpu us/event: ")
        )
    }
}
