//! offload-core's exported Sink conformance suite (`offload_core::conformance::sink`)
//! against the Iceberg sink, on a SQLite and on a PostgreSQL SQL catalog (the
//! PostgreSQL variants fail when the server is unreachable).
//!
//! Committed rows are read back with iceberg-rust's own scan through a
//! separate catalog connection, not through the sink. Reopening alternates
//! between two independently connected sinks. The orphan grace period is
//! zero, so the cleanup check really deletes the crashed run's files.
#![cfg(all(feature = "sqlite", feature = "postgres"))] // the suite runs on both SQL catalogs

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, TimestampMicrosecondType};
use async_trait::async_trait;
use common::Backend;
use futures::TryStreamExt;
use iceberg::ErrorKind;
use offload_core::conformance::sink::SinkFixture;
use offload_core::{Error, Sink, TableConfig};
use offload_sink_iceberg::{IcebergSink, TableName};

struct IcebergFixture {
    /// Owns the catalog (temp dir, PostgreSQL database) until the check ends.
    _backend: Backend,
    sinks: [IcebergSink; 2],
    next: AtomicUsize,
    /// A third connection, for reading rows independently of the sinks.
    reader: IcebergSink,
}

impl IcebergFixture {
    async fn new(backend: Backend) -> Self {
        let connect = || async {
            IcebergSink::connect(backend.config().orphan_grace(Duration::ZERO))
                .await
                .unwrap()
        };
        let sinks = [connect().await, connect().await];
        let reader = connect().await;
        Self {
            _backend: backend,
            sinks,
            next: AtomicUsize::new(0),
            reader,
        }
    }
}

fn sink_err(e: impl Into<offload_sink_iceberg::IcebergSinkError>) -> Error {
    e.into().into()
}

#[async_trait]
impl SinkFixture for IcebergFixture {
    fn sink(&self) -> Arc<dyn Sink> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sinks.len();
        Arc::new(self.sinks[i].clone())
    }

    async fn create_table(&self, name: &str) -> Result<TableConfig, Error> {
        TableConfig::builder(name)
            .sink_table(format!("conformance.{name}"))
            .timestamp_column("ts")
            .sequence_column("seq")
            .build()
    }

    async fn committed_rows(&self, table: &TableConfig) -> Result<Vec<(i64, u64)>, Error> {
        let ident = TableName::parse(table.sink_table(), offload_sink_iceberg::DEFAULT_NAMESPACE)
            .map_err(sink_err)?;
        let loaded = match self.reader.catalog().load_table(&ident).await {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Error::sink(e, false)),
        };
        let batches: Vec<_> = loaded
            .scan()
            .select(["ts", "seq"])
            .build()
            .map_err(|e| Error::sink(e, false))?
            .to_arrow()
            .await
            .map_err(|e| Error::sink(e, false))?
            .try_collect()
            .await
            .map_err(|e| Error::sink(e, false))?;
        let mut rows = Vec::new();
        for b in &batches {
            let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
            // UInt64 sequences are stored as decimal(20,0).
            let seq = b.column(1).as_primitive::<Decimal128Type>();
            for i in 0..b.num_rows() {
                rows.push((ts.value(i), u64::try_from(seq.value(i)).expect("a u64 sequence")));
            }
        }
        Ok(rows)
    }
}

mod sqlite {
    use super::*;

    async fn fixture() -> IcebergFixture {
        let backend = Backend::sqlite();
        assert_eq!(backend.name, "sqlite");
        IcebergFixture::new(backend).await
    }

    offload_core::sink_conformance_tests!(fixture);
}

mod postgres {
    use super::*;

    async fn fixture() -> IcebergFixture {
        let backend = Backend::postgres().await;
        assert_eq!(backend.name, "postgres");
        IcebergFixture::new(backend).await
    }

    offload_core::sink_conformance_tests!(fixture);
}
