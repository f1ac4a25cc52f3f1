//! The `scale` coordinator: starts the worker processes, merges their lines, samples the
//! nodes' CPU and memory, shows progress, and writes the report and the plot.

use super::procstat::{cpu_s, rss_bytes};
use super::snapshot::{merge, new_histogram, Held, Percentiles, WorkerSnapshot};
use super::ScaleArgs;
use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One point of the time series (every `--sample-interval`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    pub held: BTreeMap<String, Held>,
    /// Connected / wanted over every session kind.
    pub connected_ratio: f64,
    /// Driver -> consumer latency of the positions received in this interval, ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Connections that broke, cumulative.
    pub drops: u64,
    /// Per node: CPU (cores, over the interval) and RSS (MiB).
    pub node_cpu_cores: BTreeMap<String, f64>,
    pub node_rss_mib: BTreeMap<String, f64>,
    pub generator_cpu_cores: f64,
    pub generator_rss_mib: f64,
}

/// A process sampled from /proc.
struct Proc {
    name: String,
    pid: u32,
    idle_rss: u64,
    last_cpu_s: f64,
}

fn parse_node(spec: &str) -> anyhow::Result<(String, u32)> {
    let (name, pid) = spec
        .split_once('=')
        .with_context(|| format!("--node `{spec}` is not NAME=PID"))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("--node `{spec}`: `{pid}` is not a process id"))?;
    Ok((name.trim().to_owned(), pid))
}

/// The coordinator's arguments for a worker: ours without `--workers`, `--report`, `--node`,
/// plus the worker's index, the worker count and the shared start time.
fn worker_args(index: usize, workers: usize, start_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        let flag = a.split('=').next().unwrap_or("");
        if matches!(flag, "--workers" | "--report" | "--node") {
            skip = !a.contains('=');
            continue;
        }
        out.push(a);
    }
    out.extend([
        "--workers".into(),
        workers.to_string(),
        "--worker-index".into(),
        index.to_string(),
        "--start-unix-ms".into(),
        start_ms.to_string(),
    ]);
    out
}

/// Runs the coordinator; returns the process exit code (0: the run completed; the judging
/// of its figures is `scripts/scale-test.sh`'s).
pub fn run(args: ScaleArgs) -> anyhow::Result<i32> {
    let mut nodes = Vec::new();
    for spec in &args.nodes {
        let (name, pid) = parse_node(spec)?;
        nodes.push(Proc {
            name,
            pid,
            idle_rss: rss_bytes(pid)?,
            last_cpu_s: cpu_s(pid)?,
        });
    }
    let workers = args.worker_count();
    // Workers load the road network and bind their sockets first: start together after it.
    let start_ms = nodekit::unix_ms() + 3000;
    let exe = std::env::current_exe().context("finding this binary")?;
    let log_path = args
        .report
        .as_ref()
        .map(|r| r.with_extension("workers.log"));
    let (tx, rx) = mpsc::channel::<(usize, WorkerSnapshot)>();
    let mut children: Vec<Child> = Vec::new();
    let mut readers = Vec::new();
    for i in 0..workers {
        let stderr = match &log_path {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(&exe)
            .arg("scale")
            .args(
                worker_args(i, workers, start_ms)
                    .iter()
                    .skip_while(|a| *a == "scale"),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        let out = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<WorkerSnapshot>(&line) {
                    Ok(s) => {
                        if tx.send((i, s)).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("worker {i}: unreadable line ({e}): {line}"),
                }
            }
        }));
        children.push(child);
    }
    drop(tx);
    let result = supervise(&args, workers, start_ms, &mut nodes, &mut children, &rx);
    for c in &mut children {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    for r in readers {
        let _ = r.join();
    }
    result
}

/// Merged state of the run while it goes.
struct Merged {
    latest: Vec<Option<WorkerSnapshot>>,
    interval_latency: Histogram<u64>,
    all_latency: Histogram<u64>,
    steady_latency: Histogram<u64>,
    handshakes: BTreeMap<String, Histogram<u64>>,
    lost_events: Vec<String>,
}

impl Merged {
    fn take(&mut self, i: usize, s: WorkerSnapshot, steady: bool) {
        merge(&mut self.interval_latency, &s.latency_ms);
        merge(&mut self.all_latency, &s.latency_ms);
        if steady {
            merge(&mut self.steady_latency, &s.latency_ms);
        }
        for (k, p) in &s.handshakes_ms {
            merge(
                self.handshakes
                    .entry(k.clone())
                    .or_insert_with(new_histogram),
                p,
            );
        }
        for e in &s.lost_events {
            if self.lost_events.len() < 100 {
                self.lost_events.push(e.clone());
            }
        }
        self.latest[i] = Some(s);
    }

    fn sum(&self, f: impl Fn(&WorkerSnapshot) -> u64) -> u64 {
        self.latest.iter().flatten().map(f).sum()
    }

    fn held(&self) -> BTreeMap<String, Held> {
        let mut out: BTreeMap<String, Held> = BTreeMap::new();
        for s in self.latest.iter().flatten() {
            for (k, h) in &s.held {
                out.entry(k.clone()).or_default().add(h);
            }
        }
        out
    }

    fn map_sum(
        &self,
        f: impl Fn(&WorkerSnapshot) -> &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.latest.iter().flatten() {
            for (k, v) in f(s) {
                *out.entry(k.clone()).or_insert(0) += v;
            }
        }
        out
    }
}

fn ratio(held: &BTreeMap<String, Held>) -> f64 {
    let (w, c) = held
        .values()
        .fold((0, 0), |(w, c), h| (w + h.wanted, c + h.connected));
    if w == 0 {
        1.0
    } else {
        c as f64 / w as f64
    }
}

fn supervise(
    args: &ScaleArgs,
    workers: usize,
    start_ms: u64,
    nodes: &mut [Proc],
    children: &mut [Child],
    rx: &mpsc::Receiver<(usize, WorkerSnapshot)>,
) -> anyhow::Result<i32> {
    let ramp = args.ramp();
    let steady_from_ms = start_ms + (ramp + args.warmup.min(args.steady / 2)).as_millis() as u64;
    let end_ms = start_ms + (ramp + args.steady).as_millis() as u64;
    let total_s = (end_ms - start_ms) as f64 / 1000.0;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(total_s as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:25} {pos}/{len}s {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut m = Merged {
        latest: vec![None; workers],
        interval_latency: new_histogram(),
        all_latency: new_histogram(),
        steady_latency: new_histogram(),
        handshakes: BTreeMap::new(),
        lost_events: Vec::new(),
    };
    let mut gen = Vec::new();
    for c in children.iter() {
        gen.push((c.id(), 0.0f64));
    }
    let own = std::process::id();
    let mut own_cpu = cpu_s(own).unwrap_or(0.0);
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_sample = Instant::now();
    let mut node_cpu_at_steady: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut gen_cpu_at_steady: Option<(f64, f64)> = None;
    let mut drops_at_steady: Option<u64> = None;
    let mut steady_ratios: Vec<f64> = Vec::new();
    let mut steady_wanted: Vec<u64> = Vec::new();
    let mut node_rss_steady_max: BTreeMap<String, u64> = BTreeMap::new();
    let mut gen_cpu_total = 0.0;
    let mut finished = vec![false; workers];
    loop {
        let wait = args
            .sample_interval
            .saturating_sub(last_sample.elapsed())
            .max(Duration::from_millis(10));
        match rx.recv_timeout(wait) {
            Ok((i, s)) => {
                let steady = s.unix_ms >= steady_from_ms && s.unix_ms <= end_ms;
                if s.last {
                    finished[i] = true;
                }
                m.take(i, s, steady);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_sample.elapsed() < args.sample_interval {
            continue;
        }
        let dt = last_sample.elapsed().as_secs_f64();
        last_sample = Instant::now();
        let now_ms = nodekit::unix_ms();
        let in_steady = now_ms >= steady_from_ms && now_ms <= end_ms;
        let mut sample = Sample {
            t_s: now_ms.saturating_sub(start_ms) as f64 / 1000.0,
            held: m.held(),
            ..Default::default()
        };
        sample.connected_ratio = ratio(&sample.held);
        let p = Percentiles::of(&m.interval_latency);
        sample.latency_p50_ms = p.p50;
        sample.latency_p99_ms = p.p99;
        m.interval_latency.reset();
        sample.drops = m.map_sum(|s| &s.drops).values().sum();
        for n in nodes.iter_mut() {
            let (Ok(cpu), Ok(rss)) = (cpu_s(n.pid), rss_bytes(n.pid)) else {
                continue;
            };
            sample
                .node_cpu_cores
                .insert(n.name.clone(), (cpu - n.last_cpu_s) / dt);
            n.last_cpu_s = cpu;
            sample
                .node_rss_mib
                .insert(n.name.clone(), rss as f64 / 1048576.0);
            if in_steady {
                node_cpu_at_steady
                    .entry(n.name.clone())
                    .or_insert((cpu, now_ms as f64 / 1000.0));
                let e = node_rss_steady_max.entry(n.name.clone()).or_insert(0);
                *e = (*e).max(rss);
            }
        }
        let mut gcpu = 0.0;
        let mut grss = 0u64;
        for (pid, last) in gen.iter_mut() {
            if let Ok(c) = cpu_s(*pid) {
                gcpu += c - *last;
                *last = c;
            }
            grss += rss_bytes(*pid).unwrap_or(0);
        }
        if let Ok(c) = cpu_s(own) {
            gcpu += c - own_cpu;
            own_cpu = c;
        }
        gen_cpu_total += gcpu;
        sample.generator_cpu_cores = gcpu / dt;
        sample.generator_rss_mib = grss as f64 / 1048576.0;
        if in_steady {
            gen_cpu_at_steady.get_or_insert((gen_cpu_total, now_ms as f64 / 1000.0));
            drops_at_steady.get_or_insert(sample.drops);
            steady_ratios.push(sample.connected_ratio);
            steady_wanted.push(sample.held.values().map(|h| h.wanted).sum());
        }
        let held = &sample.held;
        let g = |k: &str| held.get(k).copied().unwrap_or_default();
        let (dq, dh, cw, cs) = (
            g("driver/quic"),
            g("driver/https"),
            g("consumer/webtransport"),
            g("consumer/websocket"),
        );
        bar.set_position(sample.t_s.min(total_s) as u64);
        bar.set_message(format!(
            "drivers {}/{} consumers wt {}/{} ws {}/{} · p99 {:.0} ms · acked {} lost {} · {}",
            dq.connected + dh.connected,
            dq.wanted + dh.wanted,
            cw.connected,
            cw.wanted,
            cs.connected,
            cs.wanted,
            sample.latency_p99_ms,
            m.sum(|s| s.acknowledged),
            m.sum(|s| s.lost),
            sample
                .node_cpu_cores
                .iter()
                .map(|(n, c)| format!(
                    "{n} {c:.2} cores {:.0} MiB",
                    sample.node_rss_mib.get(n).copied().unwrap_or(0.0)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if bar.is_hidden() {
            // Not a terminal (a script's log): one line per sample instead of the bar.
            eprintln!(
                "[scale {:>6.0}s] connected {:.4} · sessions {:?} · p99 {:.0} ms · {:?} · generator {:.2} cores",
                sample.t_s,
                sample.connected_ratio,
                sample
                    .held
                    .iter()
                    .map(|(k, h)| format!("{k} {}/{}", h.connected, h.wanted))
                    .collect::<Vec<_>>(),
                sample.latency_p99_ms,
                sample
                    .node_cpu_cores
                    .iter()
                    .map(|(n, c)| format!("{n} {c:.2} cores"))
                    .collect::<Vec<_>>(),
                sample.generator_cpu_cores
            );
        }
        samples.push(sample);
        if finished.iter().all(|f| *f) {
            break;
        }
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() && !finished[i] {
                    anyhow::bail!("worker {i} exited with {status} before finishing");
                }
            }
        }
    }
    bar.finish_and_clear();
    for (i, c) in children.iter_mut().enumerate() {
        let status = c
            .wait()
            .with_context(|| format!("waiting for worker {i}"))?;
        anyhow::ensure!(status.success(), "worker {i} exited with {status}");
    }
    // Steady-state figures.
    let end_s = end_ms as f64 / 1000.0;
    let last = samples
        .iter()
        .rev()
        .find(|s| s.t_s * 1000.0 + start_ms as f64 <= end_ms as f64);
    let mut node_report = BTreeMap::new();
    for n in nodes.iter() {
        let cores = match (node_cpu_at_steady.get(&n.name), cpu_s(n.pid).ok()) {
            (Some((c0, t0)), Some(_)) => {
                // CPU over the steady window: from its first sample to the last one in it.
                let last_cpu = n.last_cpu_s;
                let t1 = last.map_or(end_s, |s| (start_ms as f64 / 1000.0) + s.t_s);
                (last_cpu - c0) / (t1 - t0).max(1e-9)
            }
            _ => f64::NAN,
        };
        let max = node_rss_steady_max.get(&n.name).copied().unwrap_or(0);
        let over = max.saturating_sub(n.idle_rss) as f64 / 1024.0;
        node_report.insert(
            n.name.clone(),
            serde_json::json!({
                "pid": n.pid,
                "cpu_cores_steady": round(cores, 3),
                "rss_idle_mib": round(n.idle_rss as f64 / 1048576.0, 1),
                "rss_steady_max_mib": round(max as f64 / 1048576.0, 1),
                "rss_over_idle_kib_per_delivery": round(over / args.deliveries as f64, 2),
            }),
        );
    }
    let steady_secs = {
        let t0 = steady_from_ms as f64 / 1000.0;
        let t1 = last.map_or(end_s, |s| (start_ms as f64 / 1000.0) + s.t_s);
        (t1 - t0).max(0.0)
    };
    let drops_total: u64 = m.map_sum(|s| &s.drops).values().sum();
    let steady_drops = last.map_or(0, |s| s.drops)
        - drops_at_steady
            .unwrap_or(0)
            .min(last.map_or(0, |s| s.drops));
    let mean_wanted = if steady_wanted.is_empty() {
        0.0
    } else {
        steady_wanted.iter().sum::<u64>() as f64 / steady_wanted.len() as f64
    };
    let drops_pct_per_min = if steady_secs > 0.0 && mean_wanted > 0.0 {
        100.0 * steady_drops as f64 / mean_wanted / (steady_secs / 60.0)
    } else {
        0.0
    };
    let gen_cores = match gen_cpu_at_steady {
        Some((c0, t0)) => {
            let t1 = last.map_or(end_s, |s| (start_ms as f64 / 1000.0) + s.t_s);
            (gen_cpu_total - c0) / (t1 - t0).max(1e-9)
        }
        None => f64::NAN,
    };
    let min_ratio = steady_ratios.iter().copied().fold(f64::NAN, f64::min);
    let mean_ratio = if steady_ratios.is_empty() {
        f64::NAN
    } else {
        steady_ratios.iter().sum::<f64>() / steady_ratios.len() as f64
    };
    let handshakes: BTreeMap<String, Percentiles> = m
        .handshakes
        .iter()
        .map(|(k, h)| (k.clone(), Percentiles::of(h)))
        .collect();
    let report = serde_json::json!({
        "mode": "scale",
        "deliveries": args.deliveries,
        "ws_share": args.ws_share,
        "https_share": args.https_share,
        "ramp_rate_per_s": args.ramp_rate,
        "ramp_s": round(ramp.as_secs_f64(), 1),
        "steady_s": args.steady.as_secs_f64(),
        "steady_window_s": round(steady_secs, 1),
        "fix_interval_s": args.fix_interval.as_secs_f64(),
        "workers": workers,
        "sessions": {
            "at_end": last.map(|s| s.held.clone()).unwrap_or_default(),
            "steady_connected_ratio_min": round(min_ratio, 5),
            "steady_connected_ratio_mean": round(mean_ratio, 5),
        },
        "handshake_ms": handshakes,
        "failures": m.map_sum(|s| &s.failures),
        "reconnects": {
            "drops_total": drops_total,
            "drops_by_kind": m.map_sum(|s| &s.drops),
            "reconnected_by_kind": m.map_sum(|s| &s.reconnects),
            "steady_drops": steady_drops,
            "steady_drops_pct_of_sessions_per_min": round(drops_pct_per_min, 4),
            "new_consumer_sessions": m.sum(|s| s.new_consumers),
            "redirects": m.sum(|s| s.redirects),
        },
        "latency_ms": {
            "all": Percentiles::of(&m.all_latency),
            "steady": Percentiles::of(&m.steady_latency),
        },
        "status_events": {
            "acknowledged": m.sum(|s| s.acknowledged),
            "seen": m.sum(|s| s.seen),
            "lost": m.sum(|s| s.lost),
            "lost_events": m.lost_events,
            "made_by_hub_first": m.sum(|s| s.conflicts),
            "replayed": m.sum(|s| s.replayed),
            "failed": m.sum(|s| s.failed_changes),
            "gaps_seen_by_consumers": m.sum(|s| s.event_gaps),
        },
        "deliveries_created": m.sum(|s| s.deliveries_created),
        "deliveries_completed": m.sum(|s| s.deliveries_completed),
        "fixes_sent": m.sum(|s| s.fixes_sent),
        "positions_received": m.sum(|s| s.positions_received),
        "nodes": node_report,
        "generator": {
            "cpu_cores_steady": round(gen_cores, 3),
            "rss_mib_at_end": last.map_or(0.0, |s| round(s.generator_rss_mib, 1)),
        },
        "errors": m.sum(|s| s.errors),
        "first_errors": m.latest.iter().flatten().flat_map(|s| s.first_errors.clone()).take(20).collect::<Vec<_>>(),
        "samples": samples,
    });
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        let svg = path.with_extension("svg");
        super::plot::write_svg(&svg, &samples, args.deliveries)
            .with_context(|| format!("drawing {}", svg.display()))?;
        eprintln!("report: {}  plot: {}", path.display(), svg.display());
    } else {
        println!("{json}");
    }
    Ok(0)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    if v.is_finite() {
        (v * f).round() / f
    } else {
        v
    }
}
