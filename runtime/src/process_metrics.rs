//! The `process_*` series every Prometheus client exports (CPU time, memory,
//! file descriptors, threads, start time), read from `/proc/self` on each
//! scrape with the `procfs` crate. Names and meanings are client_golang's,
//! so the usual dashboards and alerts work unchanged. On a system without
//! `/proc` (not Linux), or when a read fails, the series are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: f64,
    threads: i64,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

#[cfg(target_os = "linux")]
fn read() -> Option<Reading> {
    use procfs::process::{LimitValue, Process};
    let me = Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    let max_fds = me
        .limits()
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            LimitValue::Value(n) => i64::try_from(n).ok(),
            LimitValue::Unlimited => None,
        });
    Some(Reading {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: i64::try_from(stat.rss.saturating_mul(procfs::page_size()))
            .unwrap_or(i64::MAX),
        virtual_bytes: i64::try_from(stat.vsize).unwrap_or(i64::MAX),
        start_time_seconds: boot + stat.starttime as f64 / ticks,
        threads: stat.num_threads,
        open_fds: me.fd_count().ok().and_then(|n| i64::try_from(n).ok()),
        max_fds,
    })
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<Reading> {
    None
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl Into<Option<i64>>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value.into() else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = read() else {
            return Ok(());
        };
        // Counter names go without `_total`: the encoder adds it.
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let start = ConstGauge::new(r.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            None,
            start.metric_type(),
        )?)?;
        let e = &mut encoder;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            r.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            r.virtual_bytes,
        )?;
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            r.threads,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            r.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            r.max_fds,
        )?;
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let r = read().expect("/proc/self is readable");
        assert!(r.resident_bytes > 0 && r.virtual_bytes >= r.resident_bytes);
        assert!(r.threads >= 1);
        assert!(r.open_fds.is_some_and(|n| n >= 3));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started within the last hour of this test, and not in the future.
        assert!(r.start_time_seconds <= now + 2.0 && r.start_time_seconds > now - 3600.0);
    }
}
