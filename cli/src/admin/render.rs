//! What the admin pages say: the Prometheus text, the status page's JSON
//! and the page itself, and the configuration with its secrets redacted.

use std::{fmt::Write, time::SystemTime};

use ringway_http::metrics::{ListenerMetrics, ServerMetrics, ACL_SPECIAL, LATENCY_BOUNDS_US, STATUS_CLASSES};

use super::{Served, View, WorkerMetrics};

/// The status page: tables and a requests/s chart, filled by its script
/// from `/status.json` every second.
pub(super) const STATUS_PAGE: &str = include_str!("status.html");

/// A metric's name, its help, and how to read it from one worker's counters.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// A label value escaped for the text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A string escaped for JSON.
fn json(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Sums one listener's counter over the workers.
fn sum(workers: &[WorkerMetrics], listener: usize, read: impl Fn(&ListenerMetrics) -> u64) -> u64 {
    workers
        .iter()
        .filter_map(|w| w.listeners.get(listener)?.as_deref())
        .map(read)
        .sum()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn seconds_since_epoch(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `/metrics`.
pub(super) fn prometheus(view: &View, served: &Served, workers: &[WorkerMetrics]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    header(&mut out, "ringway_build_info", "gauge", "The running version.");
    let _ = writeln!(
        out,
        "ringway_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    header(
        &mut out,
        "ringway_start_time_seconds",
        "gauge",
        "When the process started, since the epoch.",
    );
    let _ = writeln!(
        out,
        "ringway_start_time_seconds {:.3}",
        seconds_since_epoch(view.started)
    );
    header(
        &mut out,
        "ringway_config_reloads_total",
        "counter",
        "Configurations reloaded (SIGHUP, ringway reload) and now served.",
    );
    let _ = writeln!(out, "ringway_config_reloads_total {}", served.reloads);
    header(&mut out, "ringway_workers", "gauge", "Worker threads.");
    let _ = writeln!(out, "ringway_workers {}", view.workers.len());

    header(
        &mut out,
        "ringway_connections_open",
        "gauge",
        "Client connections open, by worker.",
    );
    for (i, s) in view.stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringway_connections_open{{worker=\"{i}\"}} {}",
            load(&s.active)
        );
    }
    header(
        &mut out,
        "ringway_connections_accepted_total",
        "counter",
        "Client connections accepted, by worker.",
    );
    for (i, s) in view.stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringway_connections_accepted_total{{worker=\"{i}\"}} {}",
            load(&s.accepted)
        );
    }
    header(
        &mut out,
        "ringway_worker_requests_total",
        "counter",
        "Requests finished, by worker.",
    );
    for (i, s) in view.stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringway_worker_requests_total{{worker=\"{i}\"}} {}",
            load(&s.requests)
        );
    }

    let http: Vec<(usize, &super::ListenerView)> = served
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.mode != "tcp")
        .collect();
    header(
        &mut out,
        "ringway_requests_total",
        "counter",
        "Requests answered, by listener and status class (0xx: none sent).",
    );
    for &(i, l) in &http {
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            let n = sum(workers, i, |m| m.requests[class].get());
            let _ = writeln!(
                out,
                "ringway_requests_total{{listener=\"{}\",class=\"{name}\"}} {n}",
                label(&l.name)
            );
        }
    }
    header(
        &mut out,
        "ringway_route_requests_total",
        "counter",
        "Requests by route (its index, host, path prefix and upstream) and status class.",
    );
    for &(i, l) in &http {
        for (r, [host, prefix, upstream]) in l.routes.iter().enumerate() {
            for (class, name) in STATUS_CLASSES.iter().enumerate() {
                let n = sum(workers, i, |m| m.routes.get(r).map_or(0, |c| c[class].get()));
                let _ = writeln!(
                    out,
                    "ringway_route_requests_total{{listener=\"{}\",route=\"{r}\",host=\"{}\",path_prefix=\"{}\",upstream=\"{}\",class=\"{name}\"}} {n}",
                    label(&l.name),
                    label(host),
                    label(prefix),
                    label(upstream)
                );
            }
        }
    }
    header(
        &mut out,
        "ringway_request_duration_seconds",
        "histogram",
        "From a request head's arrival to the end of its answer.",
    );
    for &(i, l) in &http {
        let name = label(&l.name);
        let mut cumulative = 0;
        for (b, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += sum(workers, i, |m| m.latency.buckets[b].get());
            let _ = writeln!(
                out,
                "ringway_request_duration_seconds_bucket{{listener=\"{name}\",le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count = sum(workers, i, |m| m.latency.count());
        let sum_us = sum(workers, i, |m| m.latency.sum_us.get());
        let _ = writeln!(
            out,
            "ringway_request_duration_seconds_bucket{{listener=\"{name}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "ringway_request_duration_seconds_sum{{listener=\"{name}\"}} {:.6}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "ringway_request_duration_seconds_count{{listener=\"{name}\"}} {count}"
        );
    }
    let per_listener: [Series<ListenerMetrics>; 5] = [
        (
            "ringway_received_bytes_total",
            "Bytes from clients: heads, bodies and tunnels.",
            |m| m.bytes_in.get(),
        ),
        (
            "ringway_sent_bytes_total",
            "Bytes to clients: heads, bodies and tunnels.",
            |m| m.bytes_out.get(),
        ),
        (
            "ringway_tunnels_total",
            "Tunnels (CONNECT, upgrades) that ended.",
            |m| m.tunnels.get(),
        ),
        (
            "ringway_refused_heads_total",
            "Requests refused while their head was read (400, 408, 414, 431).",
            |m| m.refused_heads.get(),
        ),
        (
            "ringway_rejected_connections_total",
            "Connections closed unanswered over a connection limit.",
            |m| m.rejected_connections.get(),
        ),
    ];
    for (metric, help, read) in per_listener {
        header(&mut out, metric, "counter", help);
        for &(i, l) in &http {
            let _ = writeln!(
                out,
                "{metric}{{listener=\"{}\"}} {}",
                label(&l.name),
                sum(workers, i, read)
            );
        }
    }
    header(
        &mut out,
        "ringway_tls_handshakes_total",
        "counter",
        "TLS handshakes on a listener, by result.",
    );
    for &(i, l) in &http {
        for (r, result) in ["ok", "failed"].iter().enumerate() {
            let n = sum(workers, i, |m| m.tls_handshakes[r].get());
            let _ = writeln!(
                out,
                "ringway_tls_handshakes_total{{listener=\"{}\",result=\"{result}\"}} {n}",
                label(&l.name)
            );
        }
    }
    header(
        &mut out,
        "ringway_acl_decisions_total",
        "counter",
        "Forward-proxy access decisions, by rule and decision.",
    );
    for &(i, l) in &http {
        let rules = l.acl_rules.iter().map(String::as_str).chain(ACL_SPECIAL);
        if l.mode != "forward" {
            continue;
        }
        for (slot, rule) in rules.enumerate() {
            for (d, decision) in ["allow", "deny"].iter().enumerate() {
                let n = sum(workers, i, |m| m.acl.get(slot).map_or(0, |c| c[d].get()));
                let _ = writeln!(
                    out,
                    "ringway_acl_decisions_total{{listener=\"{}\",rule=\"{}\",decision=\"{decision}\"}} {n}",
                    label(&l.name),
                    label(rule)
                );
            }
        }
    }

    header(
        &mut out,
        "ringway_upstream_server_up",
        "gauge",
        "Whether active health checks hold the server up (1 without checks).",
    );
    for g in &served.upstreams {
        for i in 0..g.servers.len() {
            let _ = writeln!(
                out,
                "ringway_upstream_server_up{{upstream=\"{}\",server=\"{}\"}} {}",
                label(&g.name),
                g.health.addr(i),
                u8::from(g.health.is_up(i))
            );
        }
    }
    let per_server: [(&str, Series<ServerMetrics>); 3] = [
        (
            "gauge",
            (
                "ringway_upstream_in_flight",
                "Attempts under way on the server.",
                |s| s.in_flight.get(),
            ),
        ),
        (
            "counter",
            (
                "ringway_upstream_attempts_total",
                "Attempts sent to the server.",
                |s| s.attempts.get(),
            ),
        ),
        (
            "counter",
            (
                "ringway_upstream_failures_total",
                "Attempts that failed: no connection, a reset, a timeout, a 5xx.",
                |s| s.failures.get(),
            ),
        ),
    ];
    for (kind, (metric, help, read)) in per_server {
        header(&mut out, metric, kind, help);
        for (gi, g) in served.upstreams.iter().enumerate() {
            for si in 0..g.servers.len() {
                let n: u64 = workers
                    .iter()
                    .filter_map(|w| w.upstreams.server(gi, si))
                    .map(read)
                    .sum();
                let _ = writeln!(
                    out,
                    "{metric}{{upstream=\"{}\",server=\"{}\"}} {n}",
                    label(&g.name),
                    g.health.addr(si)
                );
            }
        }
    }
    if let Some(logs) = &served.logs {
        header(
            &mut out,
            "ringway_log_lines_written_total",
            "counter",
            "Access-log lines written.",
        );
        let _ = writeln!(out, "ringway_log_lines_written_total {}", logs.written());
        header(
            &mut out,
            "ringway_log_lines_dropped_total",
            "counter",
            "Access-log lines dropped: the writer fell behind, or a write failed.",
        );
        let _ = writeln!(out, "ringway_log_lines_dropped_total {}", logs.dropped());
    }
    caches(&mut out, workers);
    out
}

/// The caches' counters, summed over workers, and what each store holds.
fn caches(out: &mut String, workers: &[WorkerMetrics]) {
    let Some(first) = workers.first().filter(|w| !w.caches.is_empty()) else {
        return;
    };
    type Count = fn(&ringway_http::cache::CacheCounters) -> u64;
    let counts: [(&str, &str, Count); 8] = [
        (
            "ringway_cache_hits_total",
            "Requests answered from the cache, fresh.",
            |c| c.hits.get(),
        ),
        (
            "ringway_cache_misses_total",
            "Requests the cache sent to the upstream.",
            |c| c.misses.get(),
        ),
        (
            "ringway_cache_revalidated_total",
            "Requests answered from the cache after the upstream said it is current (304).",
            |c| c.revalidated.get(),
        ),
        (
            "ringway_cache_stale_total",
            "Requests answered from the cache, stale.",
            |c| c.stale.get(),
        ),
        (
            "ringway_cache_fills_total",
            "Responses stored after a miss or a background refresh.",
            |c| c.fills.get(),
        ),
        (
            "ringway_cache_coalesced_total",
            "Misses that waited for another request fetching the same response.",
            |c| c.coalesced.get(),
        ),
        (
            "ringway_cache_invalidations_total",
            "Stored responses dropped by unsafe methods.",
            |c| c.invalidations.get(),
        ),
        (
            "ringway_cache_refreshes_total",
            "Background refreshes of responses answered stale within stale-while-revalidate.",
            |c| c.refreshes.get(),
        ),
    ];
    for (name, help, count) in counts {
        header(out, name, "counter", help);
        for (i, (store, _)) in first.caches.iter().enumerate() {
            let sum: u64 = workers
                .iter()
                .filter_map(|w| w.caches.get(i))
                .map(|(_, c)| count(c))
                .sum();
            let _ = writeln!(out, "{name}{{cache=\"{}\"}} {sum}", label(&store.settings().name));
        }
    }
    type Held = fn(&ringway_http::cache::StoreStats) -> u64;
    let held: [(&str, &str, &str, Held); 4] = [
        (
            "ringway_cache_evictions_total",
            "counter",
            "Stored responses evicted to make room.",
            |s| s.evictions,
        ),
        ("ringway_cache_objects", "gauge", "Keys the cache holds.", |s| {
            s.keys
        }),
        (
            "ringway_cache_bytes",
            "gauge",
            "Bytes the cache holds (a disk tier's files in whole blocks).",
            |s| s.bytes,
        ),
        (
            "ringway_cache_memory_bytes",
            "gauge",
            "Bytes the cache holds in memory (with a disk tier, the heads and keys of its files).",
            |s| s.resident,
        ),
    ];
    let stats: Vec<_> = first.caches.iter().map(|(store, _)| store.stats()).collect();
    for (name, kind, help, value) in held {
        header(out, name, kind, help);
        for ((store, _), s) in first.caches.iter().zip(&stats) {
            let _ = writeln!(
                out,
                "{name}{{cache=\"{}\"}} {}",
                label(&store.settings().name),
                value(s)
            );
        }
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// `/status.json`: what the status page shows.
pub(super) fn status_json(view: &View, served: &Served, workers: &[WorkerMetrics]) -> String {
    let mut out = String::with_capacity(4096);
    let uptime = view.started.elapsed().map_or(0, |d| d.as_secs());
    let _ = write!(
        out,
        "{{\"version\":\"{}\",\"uptime_s\":{uptime},\"reloads\":{},\"workers\":[",
        env!("CARGO_PKG_VERSION"),
        served.reloads
    );
    for (i, (info, s)) in view.workers.iter().zip(&view.stats).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let cpu = info.cpu.map_or_else(|| "null".to_owned(), |c| c.to_string());
        let _ = write!(
            out,
            "{{\"index\":{},\"cpu\":{cpu},\"open\":{},\"accepted\":{},\"requests\":{}}}",
            info.index,
            load(&s.active),
            load(&s.accepted),
            load(&s.requests)
        );
    }
    out.push_str("],\"listeners\":[");
    for (i, l) in served.listeners.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"name\":{},\"mode\":\"{}\",\"addr\":\"{}\",\"classes\":{{",
            json(&l.name),
            l.mode,
            l.addr
        );
        for (c, name) in STATUS_CLASSES.iter().enumerate() {
            if c > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{name}\":{}", sum(workers, i, |m| m.requests[c].get()));
        }
        let total: u64 = (0..STATUS_CLASSES.len())
            .map(|c| sum(workers, i, |m| m.requests[c].get()))
            .sum();
        let _ = write!(out, "}},\"requests\":{total}}}");
    }
    out.push_str("],\"routes\":[");
    let mut routes: Vec<(u64, String, &[String; 3])> = Vec::new();
    for (i, l) in served.listeners.iter().enumerate() {
        for (r, labels) in l.routes.iter().enumerate() {
            let n = sum(workers, i, |m| {
                m.routes.get(r).map_or(0, |c| c.iter().map(|x| x.get()).sum())
            });
            routes.push((n, l.name.clone(), labels));
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (k, (n, listener, [host, prefix, upstream])) in routes.iter().take(10).enumerate() {
        if k > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"listener\":{},\"host\":{},\"path_prefix\":{},\"upstream\":{},\"requests\":{n}}}",
            json(listener),
            json(host),
            json(prefix),
            json(upstream)
        );
    }
    out.push_str("],\"upstreams\":[");
    for (gi, g) in served.upstreams.iter().enumerate() {
        if gi > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"name\":{},\"servers\":[", json(&g.name));
        for si in 0..g.servers.len() {
            if si > 0 {
                out.push(',');
            }
            let read = |f: fn(&ringway_http::metrics::ServerMetrics) -> u64| -> u64 {
                workers
                    .iter()
                    .filter_map(|w| w.upstreams.server(gi, si))
                    .map(f)
                    .sum()
            };
            let _ = write!(
                out,
                "{{\"addr\":\"{}\",\"up\":{},\"backup\":{},\"in_flight\":{},\"attempts\":{},\"failures\":{}}}",
                g.health.addr(si),
                g.health.is_up(si),
                g.servers[si].backup,
                read(|s| s.in_flight.get()),
                read(|s| s.attempts.get()),
                read(|s| s.failures.get())
            );
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

/// Keys whose values are secrets: settings named so, and header fields
/// that carry credentials (in header edits such as `request_set`).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let named = ["token", "secret", "password", "passphrase"]
        .iter()
        .any(|s| key.contains(s));
    let header = matches!(
        key.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["-key", "-auth", "-credentials", "-signature"]
        .iter()
        .any(|s| key.ends_with(s));
    named || header
}

/// The configuration file with every secret's value replaced.
pub(super) fn redacted(source: &str) -> String {
    let Ok(mut doc) = source.parse::<toml_edit::DocumentMut>() else {
        return "# the running configuration could not be shown\n".to_owned();
    };
    redact_table(doc.as_table_mut());
    doc.to_string()
}

fn redact_table(table: &mut dyn toml_edit::TableLike) {
    for (key, item) in table.iter_mut() {
        if is_secret(key.get()) && item.is_value() {
            *item = toml_edit::value("<redacted>");
            continue;
        }
        redact_item(item);
    }
}

fn redact_item(item: &mut toml_edit::Item) {
    match item {
        toml_edit::Item::Table(t) => redact_table(t),
        toml_edit::Item::ArrayOfTables(a) => a.iter_mut().for_each(|t| redact_table(t)),
        toml_edit::Item::Value(value) => redact_value(value),
        toml_edit::Item::None => {}
    }
}

fn redact_value(value: &mut toml_edit::Value) {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (key, v) in t.iter_mut() {
                if is_secret(key.get()) {
                    *v = toml_edit::Value::from("<redacted>");
                } else {
                    redact_value(v);
                }
            }
        }
        toml_edit::Value::Array(a) => a.iter_mut().for_each(redact_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let text = "[admin]\ntoken = \"s3cr3t-s3cr3t-s3cr3t\"\n\n[[upstream]]\nname = \"a\"\n\
                    sticky = { cookie = \"srv\", secret = \"hush\" }\n\n[[listener]]\nname = \"token-free\"\n\
                    [listener.headers]\nrequest_set = { Authorization = \"Bearer abc\", \"X-Api-Key\" = \"k1\", \"X-Trace\" = \"on\" }\n\
                    list = [{ password = \"in-array\" }]\n";
        let shown = redacted(text);
        for secret in ["s3cr3t", "hush", "Bearer abc", "k1", "in-array"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"X-Trace\" = \"on\""), "{shown}");
        assert!(
            shown.contains("token = \"<redacted>\"") && shown.contains("name = \"token-free\""),
            "{shown}"
        );
    }

    #[test]
    fn label_and_json_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(json("a\"\u{1}"), "\"a\\\"\\u0001\"");
    }
}
