//! The results: one row per figure (Herald, the baseline of the same run, their ratio
//! and the target), the machine they ran on, printed as a table and written as JSON.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Map, Value, json};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub figure: String,
    pub herald: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// Whether the target is met; `None` where there is no target.
    pub met: Option<bool>,
}

/// Everything measured in this run.
#[derive(Debug)]
pub struct Report {
    quick: bool,
    nofile: u64,
    rows: Vec<Row>,
    figures: Map<String, Value>,
}

impl Report {
    pub fn new(quick: bool, nofile: u64) -> Self {
        Self {
            quick,
            nofile,
            rows: Vec::new(),
            figures: Map::new(),
        }
    }

    pub fn row(&mut self, row: Row) {
        eprintln!(
            "   {} | {}: {} | baseline {} | {} | target {}",
            row.scenario, row.figure, row.herald, row.baseline, row.ratio, row.target
        );
        self.rows.push(row);
    }

    /// Raw figures of a scenario, kept as given in the JSON file.
    pub fn figures(&mut self, scenario: &str, figures: Value) {
        self.figures.insert(scenario.to_owned(), figures);
    }

    pub fn failed(&mut self, scenario: &str, error: &str) {
        self.figures
            .insert(scenario.to_owned(), json!({ "error": error }));
    }

    pub fn print(&self) {
        let (cores, cpu) = machine();
        println!(
            "\nherald-bench ({}), {cores} cores ({cpu}), RLIMIT_NOFILE {}; load generator on the same machine\n",
            if self.quick { "--quick" } else { "full sizes" },
            self.nofile
        );
        println!("| scenario | figure | Herald | baseline (same run) | ratio | target | met |");
        println!("|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {met} |",
                row.scenario, row.figure, row.herald, row.baseline, row.ratio, row.target
            );
        }
        for (scenario, figures) in &self.figures {
            if let Some(error) = figures.get("error") {
                println!("\n{scenario} did not run: {error}");
            }
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let (cores, cpu) = machine();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario, "figure": r.figure, "herald": r.herald,
                    "baseline": r.baseline, "ratio": r.ratio, "target": r.target, "met": r.met,
                })
            })
            .collect();
        let doc = json!({
            "mode": if self.quick { "quick" } else { "full" },
            "machine": { "cores": cores, "cpu": cpu, "nofile": self.nofile },
            "rows": rows,
            "figures": self.figures,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Core count and CPU model.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    (cores, cpu)
}

/// Raises the open-file limit to its hard limit (10,000 SSE subscribers need 10,000
/// sockets here and as many in herald-api, which inherits the limit); returns it.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// `a / b` as `0.42×`.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "—".to_owned()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// A rate with thousands separated: `75,123/s`.
pub fn per_second(rate: f64) -> String {
    format!("{}/s", thousands(rate.round() as u64))
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
