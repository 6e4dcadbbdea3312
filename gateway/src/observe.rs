//! Request ids, one JSON log line per request, and Prometheus metrics.

use crate::error::InternalError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) → count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (method, route) → latency.
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    uploads: Mutex<(u64, u64)>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let key = (method.to_string(), route.to_string());
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((key.0.clone(), key.1.clone(), status))
            .or_default() += 1;
        let mut latency = self.latency.lock().expect("metrics lock");
        let h = latency.entry(key).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.total += 1;
    }

    pub fn upload(&self, bytes: u64) {
        let mut u = self.uploads.lock().expect("metrics lock");
        u.0 += 1;
        u.1 += bytes;
    }

    /// The Prometheus text format; `queue` is (state, jobs) from the database.
    pub fn render(&self, queue: &[(String, i64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP s2t_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE s2t_http_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().expect("metrics lock").iter() {
            out.push_str(&format!(
                "s2t_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP s2t_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE s2t_http_request_duration_seconds histogram\n");
        for ((m, r), h) in self.latency.lock().expect("metrics lock").iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\"");
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                out.push_str(&format!(
                    "s2t_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n"
                ));
            }
            out.push_str(&format!(
                "s2t_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n",
                h.total
            ));
            out.push_str(&format!(
                "s2t_http_request_duration_seconds_sum{{{labels}}} {}\n",
                h.sum
            ));
            out.push_str(&format!(
                "s2t_http_request_duration_seconds_count{{{labels}}} {}\n",
                h.total
            ));
        }
        let (n, bytes) = *self.uploads.lock().expect("metrics lock");
        out.push_str("# TYPE s2t_uploads_total counter\n");
        out.push_str(&format!("s2t_uploads_total {n}\n"));
        out.push_str("# TYPE s2t_upload_bytes_total counter\n");
        out.push_str(&format!("s2t_upload_bytes_total {bytes}\n"));
        out.push_str("# HELP s2t_queue_jobs Transcription jobs by state.\n");
        out.push_str("# TYPE s2t_queue_jobs gauge\n");
        for (state, jobs) in queue {
            out.push_str(&format!("s2t_queue_jobs{{state=\"{state}\"}} {jobs}\n"));
        }
        out
    }
}

/// The request id of this request (also in the `x-request-id` header).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: request id, metrics, and a JSON log line (with the hidden
/// internal error, for 5xx).
pub async fn layer(State(state): State<crate::AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.is_ascii())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut res = next.run(req).await;
    let status = res.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.observe(&method, &route, status, seconds);
    let internal = res.extensions_mut().remove::<InternalError>();
    if status >= 500 || internal.is_some() {
        eprintln!(
            "{}",
            serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "level": "error", "request_id": id, "method": method, "route": route,
                "status": status, "ms": (seconds * 1000.0).round(),
                "error": internal.map(|e| e.0),
            })
        );
    } else {
        println!(
            "{}",
            serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "level": "info", "request_id": id, "method": method, "route": route,
                "status": status, "ms": (seconds * 1000.0).round(),
            })
        );
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_queue_depth() {
        let m = Metrics::default();
        m.observe("GET", "/recordings", 200, 0.003);
        m.observe("GET", "/recordings", 200, 0.2);
        m.upload(1000);
        let text = m.render(&[("queued".into(), 4)]);
        assert!(text.contains(
            "s2t_http_requests_total{method=\"GET\",route=\"/recordings\",status=\"200\"} 2"
        ));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"0.25\"} 2\n"));
        assert!(text.contains(
            "s2t_http_request_duration_seconds_count{method=\"GET\",route=\"/recordings\"} 2"
        ));
        assert!(text.contains("s2t_upload_bytes_total 1000"));
        assert!(text.contains("s2t_queue_jobs{state=\"queued\"} 4"));
    }
}
