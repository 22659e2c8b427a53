//! The store contract (`portcullis_store::contract`, which SQLite runs in its own crate) on the
//! DynamoDB store, against moto behind the proxy that isolates DynamoDB calls as DynamoDB does
//! (`aws_proxy`): two handles with their own instance names on fresh tables.

use std::sync::Arc;

use portcullis_aws::{DynamoStore, TableNames};
use portcullis_core::Environment;
use portcullis_store::contract::{ENVIRONMENTS, Pair};

use crate::aws_proxy;
use crate::support::unique;

async fn pair() -> Pair {
    let proxy = aws_proxy::start_proxy().await;
    let sdk = aws_proxy::sdk_config_at(&proxy.url).await;
    let template = format!("{}-{{env}}", unique("contract"));
    let environments: Vec<Environment> = ENVIRONMENTS.iter().map(|e| Environment::parse(e).unwrap()).collect();
    let handle =
        |instance| DynamoStore::new(&sdk, TableNames::new(&template, None), environments.clone()).with_instance(instance);
    let (a, b) = (handle("contract-a"), handle("contract-b"));
    a.init().await.unwrap();
    // DynamoDB writes are conditional on what was read: the proxy holds them to force races.
    Pair { a: Arc::new(a), b: Arc::new(b), keep: Box::new(()), interleave: Some(Arc::new(proxy)) }
}

portcullis_store::store_contract!(pair);
