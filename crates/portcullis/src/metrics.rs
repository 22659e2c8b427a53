//! `/metrics`: Prometheus text (format 0.0.4, by `prometheus-client`), on a listener of its own
//! (`[metrics] listen`), never on the public one.
//!
//! What is counted as it happens: HTTP requests (by `routes`' middleware), AWS calls (by every
//! SDK client's interceptor, `portcullis_aws::api_calls`), reconciles and expiry lag (by the
//! engine, `portcullis_engine::Metrics`). What is read when scraped: live grants, the outbox's
//! backlog, the sweeper lease and guard's pending requests (`Engine::gauges`, whose store
//! reads are reused for a few seconds).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_engine::{Engine, Gauges};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An HTTP request's labels: the route as the router knows it (`/v1/grants/{env}/{*cidr}`;
/// `unmatched` for no route, so a scanner cannot grow the label set), its method and status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// The HTTP requests answered, by [`HttpLabels`]: shared by the router (which counts) and the
/// registry (which shows them).
pub type HttpRequests = Family<HttpLabels, Counter>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    environment: String,
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabels {
    service: String,
    action: String,
    outcome: &'static str,
}

/// The process's AWS calls, read from the SDK interceptors' totals when scraped.
#[derive(Debug)]
struct AwsCalls;

impl Collector for AwsCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "portcullis_aws_calls",
            "AWS API calls made, by service, action and how they ended (retries of one call are one call)",
            None,
            MetricType::Counter,
        )?;
        for (call, count) in portcullis_aws::api_calls() {
            let labels = AwsLabels { service: call.service, action: call.operation, outcome: call.outcome };
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Everything `/metrics` shows.
pub struct Metrics {
    registry: Registry,
    engine: Arc<Engine>,
    live_grants: Family<GrantLabels, Gauge>,
    outbox_pending: Gauge,
    lease_held: Gauge,
    pending_requests: Gauge,
    scrape_errors: Counter,
    /// One scrape at a time: a scrape sets the gauges, then encodes them.
    scraping: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(engine: Arc<Engine>, http: HttpRequests) -> Metrics {
        let (live_grants, outbox_pending, lease_held) = (Family::default(), Gauge::default(), Gauge::default());
        let (pending_requests, scrape_errors) = (Gauge::default(), Counter::default());
        let mut registry = Registry::default();
        registry.register("portcullis_live_grants", "Live grants, by environment and source", live_grants.clone());
        registry.register("portcullis_outbox_pending", "Announcements not yet delivered", outbox_pending.clone());
        registry.register(
            "portcullis_sweeper_lease_held",
            "1 while this process holds the sweeper lease (sweeps, reconciles, reads streams), else 0",
            lease_held.clone(),
        );
        registry.register(
            "portcullis_change_requests_pending",
            "Guard's change requests awaiting a decision",
            pending_requests.clone(),
        );
        registry.register("portcullis_http_requests", "HTTP requests answered, by route, method and status", http);
        registry.register(
            "portcullis_metrics_read_errors",
            "Scrapes whose store reads failed (the gauges then keep their last values)",
            scrape_errors.clone(),
        );
        engine.metrics().register(&mut registry);
        registry.register_collector(Box::new(AwsCalls));
        Metrics {
            registry,
            engine,
            live_grants,
            outbox_pending,
            lease_held,
            pending_requests,
            scrape_errors,
            scraping: tokio::sync::Mutex::new(()),
        }
    }

    fn set(&self, gauges: &Gauges) {
        self.live_grants.clear();
        for ((environment, source), count) in &gauges.live_grants {
            let labels = GrantLabels { environment: environment.to_string(), source: source.as_str() };
            self.live_grants.get_or_create(&labels).set(*count as i64);
        }
        self.outbox_pending.set(gauges.outbox_pending as i64);
        // A process without a lease (one that runs alone) does the lease holder's work.
        self.lease_held.set(i64::from(gauges.lease_held.unwrap_or(true)));
        self.pending_requests.set(gauges.pending_requests as i64);
    }

    /// The metrics now, in Prometheus text.
    pub async fn render(&self) -> String {
        let _one = self.scraping.lock().await;
        match self.engine.gauges().await {
            Ok(gauges) => self.set(&gauges),
            Err(err) => {
                tracing::warn!(error = %err, "metrics: could not read the gauges from the store");
                self.scrape_errors.inc();
            }
        }
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The metrics listener's router: `GET /metrics`, nothing else.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
        ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], metrics.render().await).into_response()
    }
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .layer(axum::middleware::map_response(crate::headers::nosniff))
        .with_state(metrics)
}
