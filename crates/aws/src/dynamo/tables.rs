//! Creating and checking the tables: each grants table (TTL on `ttl`, a stream with new and
//! old images) and our own (TTL on `gc_at`).

use super::*;

impl DynamoStore {
    /// Creates what is missing: each grants table (TTL on `ttl`, stream with new and old
    /// images) and our own table. Existing tables are left as they are.
    pub async fn init(&self) -> Result<InitReport, StoreError> {
        let mut report = InitReport::default();
        for table in self.grants_tables().into_keys() {
            self.ensure_table(&table, ["ip_address", "environment"], ip_whitelist::TTL, true, &mut report).await?;
        }
        let meta = self.meta().to_string();
        self.ensure_table(&meta, ["pk", "sk"], "gc_at", false, &mut report).await?;
        Ok(report)
    }

    pub(super) async fn ensure_table(
        &self,
        table: &str,
        keys: [&str; 2],
        ttl_attr: &str,
        stream: bool,
        report: &mut InitReport,
    ) -> Result<(), StoreError> {
        let err = |e: aws_sdk_dynamodb::Error| StoreError::from(failure(table, e));
        match self.client.describe_table().table_name(table).send().await {
            Ok(out) => {
                report.existing.push(table.to_string());
                let t = out.table();
                if stream && t.and_then(|t| t.latest_stream_arn()).is_none() {
                    report.warnings.push(format!(
                        "{table} has no stream: portcullis serve will not see changes other writers make \
                         (enable NEW_AND_OLD_IMAGES to get them)"
                    ));
                }
                return Ok(());
            }
            Err(e) => match failure(table, e.into()) {
                Failure::Store(StoreError::Missing { .. }) => {}
                other => return Err(other.into()),
            },
        }
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().expect("complete")
        };
        let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("complete");
        let mut create = self
            .client
            .create_table()
            .table_name(table)
            .attribute_definitions(attr(keys[0]))
            .attribute_definitions(attr(keys[1]))
            .key_schema(key(keys[0], KeyType::Hash))
            .key_schema(key(keys[1], KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest);
        if stream {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .expect("complete"),
            );
        }
        create.send().await.map_err(|e| err(e.into()))?;
        // Real DynamoDB creates tables asynchronously; TTL can only be set on an active one.
        for _ in 0..120 {
            let status = self.client.describe_table().table_name(table).send().await.map_err(|e| err(e.into()))?;
            if status.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        self.client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().enabled(true).attribute_name(ttl_attr).build().expect("complete"),
            )
            .send()
            .await
            .map_err(|e| err(e.into()))?;
        report.created.push(table.to_string());
        Ok(())
    }

    /// Checks that every table exists, so a missing one is reported before anything runs.
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut tables: Vec<String> = self.grants_tables().into_keys().collect();
        tables.push(self.meta().to_string());
        for table in tables {
            self.client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .map_err(|e| StoreError::from(failure(&table, e.into())))?;
        }
        Ok(())
    }
}
