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
    let sdk = aws_proxy::sdk_config_at(&aws_proxy::start().await).await;
    let template = format!("{}-{{env}}", unique("contract"));
    let environments: Vec<Environment> = ENVIRONMENTS.iter().map(|e| Environment::parse(e).unwrap()).collect();
    let handle =
        |instance| DynamoStore::new(&sdk, TableNames::new(&template, None), environments.clone()).with_instance(instance);
    let (a, b) = (handle("contract-a"), handle("contract-b"));
    a.init().await.unwrap();
    Pair { a: Arc::new(a), b: Arc::new(b), keep: Box::new(()) }
}

portcullis_store::store_contract!(pair);
