use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Counts API operations by name (`AuthorizeSecurityGroupIngress`, …) as an SDK interceptor:
/// one per operation executed, retries not included. How we measure API cost.
///
/// Every counter also adds each finished operation to the process's totals by service,
/// operation and outcome ([`api_calls`]), which `/metrics` shows; so every client of this
/// crate carries one.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CallCounter {
    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counter mutex poisoned").clone()
    }

    /// The calls made since `before` (an earlier [`CallCounter::snapshot`]): one run's own
    /// calls, not the totals so far. Operations not called since are left out.
    pub fn since(&self, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        self.snapshot()
            .into_iter()
            .map(|(operation, n)| {
                let earlier = before.get(&operation).copied().unwrap_or(0);
                (operation, n - earlier)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn get(&self, operation: &str) -> u64 {
        self.snapshot().get(operation).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// One kind of AWS call: which service (the IAM prefix: `ec2`, `dynamodb`, `autoscaling`, …),
/// which operation, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    pub service: String,
    pub operation: String,
    /// `success`, `client_error` (4xx: refused, throttled by DynamoDB), `server_error` (5xx:
    /// EC2's throttling among them), `timeout`, or `no_response` (the connection failed).
    pub outcome: &'static str,
}

/// Every AWS call this process has finished, by [`ApiCall`], retries not counted apart.
pub fn api_calls() -> BTreeMap<ApiCall, u64> {
    totals().lock().expect("call totals poisoned").clone()
}

fn totals() -> &'static Mutex<BTreeMap<ApiCall, u64>> {
    static TOTALS: std::sync::OnceLock<Mutex<BTreeMap<ApiCall, u64>>> = std::sync::OnceLock::new();
    TOTALS.get_or_init(Mutex::default)
}

/// How an operation ended, from its final response (or its absence).
fn outcome(context: &FinalizerInterceptorContextRef<'_>) -> &'static str {
    if let Some(Err(err)) = context.output_or_error() {
        if err.is_timeout_error() {
            return "timeout";
        }
        if context.response().is_none() {
            return "no_response";
        }
    }
    match context.response().map(|r| r.status().as_u16()) {
        Some(200..=299) => "success",
        Some(400..=499) => "client_error",
        Some(_) => "server_error",
        None => match context.output_or_error() {
            Some(Ok(_)) => "success",
            _ => "no_response",
        },
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            *self.counts.lock().expect("counter mutex poisoned").entry(metadata.name().to_string()).or_default() += 1;
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            let call = ApiCall {
                service: metadata.service().to_ascii_lowercase().replace(' ', ""),
                operation: metadata.name().to_string(),
                outcome: outcome(context),
            };
            *totals().lock().expect("call totals poisoned").entry(call).or_default() += 1;
        }
        Ok(())
    }
}
