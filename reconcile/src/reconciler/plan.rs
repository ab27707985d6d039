//! How to compare: a table's columns resolved against both layers into the
//! ClickHouse query plan and the Iceberg scan plan, the committed watermark,
//! and the queries and scans that gather every layer's figures.

use std::collections::BTreeMap;

use iceberg::TableIdent;
use offload_core::{SinkTable, Watermark};
use offload_source_clickhouse::ClickHouseTableOptions;
use offload_source_clickhouse::columns::{Column, ColumnKind};
use offload_source_clickhouse::derived;

use super::{CommittedSource, Depth, KafkaColumns, Reconciler, TableSpec};
use crate::ch::{ChFigures, ChPlan, ColumnType, quote_table};
use crate::fingerprint::ContentKind;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSide;
use crate::lake::{self, IcePlan};
use crate::report::{ColumnInfo, Figures};
use crate::{Error, IcebergLayer};

/// A table's columns and plans, resolved against both layers.
pub(super) struct Resolved {
    pub(super) ch_plan: ChPlan,
    pub(super) ice_plan: IcePlan,
    pub(super) iceberg: Option<(String, iceberg::table::Table, Option<Watermark>)>,
    pub(super) content: Vec<(String, ColumnType, ContentKind)>,
    pub(super) sums: Vec<(String, ColumnType, ContentKind)>,
    pub(super) skipped: Vec<String>,
    pub(super) kafka_columns: Option<(String, String)>,
}

/// What one table's gathering produced, before judging.
pub(super) struct Gathered {
    pub(super) ch: ChFigures,
    pub(super) ice: Option<BTreeMap<i64, Figures>>,
    pub(super) ice_from: Option<&'static str>,
    #[cfg(feature = "kafka")]
    pub(super) kafka: Option<KafkaSide>,
}

impl Reconciler {
    /// Resolves a table's columns, plans and committed watermark.
    pub(super) async fn resolve(&self, spec: &TableSpec) -> Result<Resolved, Error> {
        let full = self.depth == Depth::Full;
        let table_sql = quote_table(&spec.clickhouse_table)?;
        let ch_cols = self.clickhouse.describe(&spec.clickhouse_table).await?;
        let ch_col = |name: &str| -> Result<ColumnType, Error> {
            ch_cols
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Error::MissingColumn {
                    layer: "ClickHouse",
                    table: spec.clickhouse_table.clone(),
                    column: name.to_owned(),
                })
        };
        let ts_type = ch_col(&spec.timestamp_column)?;
        // The sequence: a stored column, or derived from key columns exactly
        // as the ClickHouse source derives it (the same SQL, from its crate).
        let (seq_type, seq_sql) = match &spec.key_columns {
            None => (ch_col(&spec.sequence_column)?, None),
            Some(keys) => {
                let options = ClickHouseTableOptions::new().key_columns(keys.iter().cloned());
                options.validate().map_err(|e| Error::InvalidConfig {
                    field: "key_columns",
                    reason: e.to_string(),
                })?;
                for key in keys {
                    ch_col(key)?;
                }
                if ch_cols.iter().any(|(n, _)| *n == spec.sequence_column) {
                    return Err(Error::InvalidConfig {
                        field: "key_columns",
                        reason: format!(
                            "the sequence of {} is derived from key columns, but ClickHouse table {} \
                             has a column {:?} of its own",
                            spec.name, spec.clickhouse_table, spec.sequence_column
                        ),
                    });
                }
                let ty = ColumnType::of(&Column::new(
                    spec.sequence_column.clone(),
                    derived::SEQUENCE_TYPE,
                    ColumnKind::Ordinary,
                ));
                (ty, options.sequence_sql())
            }
        };
        let kafka_columns = match &spec.kafka_columns {
            KafkaColumns::Off => None,
            KafkaColumns::Named { partition, offset } => {
                ch_col(partition)?;
                ch_col(offset)?;
                Some((partition.clone(), offset.clone()))
            }
            KafkaColumns::Auto => {
                let has = |n: &str| ch_cols.iter().any(|(c, _)| c == n);
                (has("kafka_partition") && has("kafka_offset"))
                    .then(|| ("kafka_partition".to_owned(), "kafka_offset".to_owned()))
            }
        };

        // Iceberg: the table, its columns and the committed watermark.
        let iceberg = match (&self.iceberg, &spec.iceberg_table) {
            (Some(layer), Some(name)) => {
                let ident = layer.ident(name)?;
                let (table, committed) = match &spec.committed {
                    // One metadata file answers both: the snapshot scanned and
                    // the watermark it carries cannot disagree.
                    CommittedSource::TableMetadata => {
                        let table = layer.load(&ident).await?;
                        let w = lake::committed_from_metadata(&table)?;
                        (table, w)
                    }
                    CommittedSource::Fixed(w) => (layer.load(&ident).await?, *w),
                    CommittedSource::Sink(sink) => {
                        load_between_equal_watermarks(layer, &ident, sink.as_ref()).await?
                    }
                };
                Some((ident.to_string(), table, committed))
            }
            (None, Some(name)) => {
                return Err(Error::InvalidConfig {
                    field: "iceberg",
                    reason: format!(
                        "table {} names Iceberg table {name} but no catalog was given",
                        spec.name
                    ),
                });
            }
            _ => None,
        };
        let ice_cols = iceberg.as_ref().map(|(_, t, _)| lake::column_names(t));
        for key in [&spec.timestamp_column, &spec.sequence_column] {
            if let (Some(cols), Some((name, _, _))) = (&ice_cols, &iceberg)
                && !cols.contains(key)
            {
                return Err(Error::MissingColumn {
                    layer: "Iceberg",
                    table: name.clone(),
                    column: key.clone(),
                });
            }
        }

        // Content and sum columns.
        let keys = [spec.timestamp_column.as_str(), spec.sequence_column.as_str()];
        let in_iceberg = |c: &str| ice_cols.as_ref().is_none_or(|cols| cols.iter().any(|x| x == c));
        let mut content = Vec::new();
        let mut skipped = Vec::new();
        match &spec.content_columns {
            Some(list) => {
                for c in list {
                    let ty = ch_col(c)?;
                    if !in_iceberg(c) {
                        return Err(Error::MissingColumn {
                            layer: "Iceberg",
                            table: spec.iceberg_table.clone().unwrap_or_default(),
                            column: c.clone(),
                        });
                    }
                    let kind = ty.content_kind().map_err(|reason| Error::UnsupportedColumn {
                        column: c.clone(),
                        type_name: ty.text.clone(),
                        role: "content",
                        reason,
                    })?;
                    content.push((c.clone(), ty, kind));
                }
            }
            None => {
                for (c, ty) in &ch_cols {
                    if keys.contains(&c.as_str()) {
                        continue;
                    }
                    if !in_iceberg(c) {
                        skipped.push(format!("{c} ({}): not in the Iceberg table", ty.text));
                        continue;
                    }
                    match ty.content_kind() {
                        Ok(kind) => content.push((c.clone(), ty.clone(), kind)),
                        Err(reason) => skipped.push(format!("{c} ({}): {reason}", ty.text)),
                    }
                }
            }
        }
        let mut sums = Vec::new();
        for c in &spec.sum_columns {
            let ty = ch_col(c)?;
            let kind =
                ty.content_kind()
                    .ok()
                    .filter(|k| k.summable())
                    .ok_or_else(|| Error::UnsupportedColumn {
                        column: c.clone(),
                        type_name: ty.text.clone(),
                        role: "sum",
                        reason: "only integers and decimals are summed exactly".into(),
                    })?;
            if !in_iceberg(c) {
                return Err(Error::MissingColumn {
                    layer: "Iceberg",
                    table: spec.iceberg_table.clone().unwrap_or_default(),
                    column: c.clone(),
                });
            }
            sums.push((c.clone(), ty, kind));
        }

        let committed = iceberg.as_ref().map(|(_, _, w)| *w);
        let ch_plan = ChPlan {
            table_sql,
            ts: (spec.timestamp_column.clone(), ts_type),
            seq: (spec.sequence_column.clone(), seq_type),
            seq_sql,
            content: content.clone(),
            sums: sums.clone(),
            kafka_columns: kafka_columns.clone(),
            range: self.range,
            split: committed,
            full,
        };
        let ice_plan = IcePlan {
            ts: spec.timestamp_column.clone(),
            seq: spec.sequence_column.clone(),
            content: content.iter().map(|(n, _, k)| (n.clone(), k.clone())).collect(),
            sums: sums.iter().map(|(n, _, k)| (n.clone(), k.clone())).collect(),
            range: self.range,
            full,
        };

        Ok(Resolved {
            ch_plan,
            ice_plan,
            iceberg,
            content,
            sums,
            skipped,
            kafka_columns,
        })
    }

    pub(super) async fn gather(
        &self,
        spec: &TableSpec,
        ch_plan: &ChPlan,
        ice_plan: &IcePlan,
        table: Option<&iceberg::table::Table>,
    ) -> Result<Gathered, Error> {
        let ch = self.clickhouse.figures(ch_plan);
        let ice = async {
            let Some(table) = table else {
                return Ok::<_, Error>((None, None));
            };
            if !ice_plan.full
                && let Some(counts) = lake::manifest_counts(table, &ice_plan.ts, self.range).await?
            {
                return Ok((Some(counts), Some("manifests")));
            }
            Ok((Some(lake::figures(table, ice_plan).await?), Some("scan")))
        };
        #[cfg(feature = "kafka")]
        let kafka = async {
            match (&self.kafka, &spec.kafka_topic) {
                (Some(k), Some(topic)) => k.figures(topic, self.range).await.map(Some),
                (None, Some(topic)) => Err(Error::InvalidConfig {
                    field: "kafka",
                    reason: format!(
                        "table {} names topic {topic} but no Kafka cluster was given",
                        spec.name
                    ),
                }),
                _ => Ok(None),
            }
        };
        #[cfg(not(feature = "kafka"))]
        if let Some(topic) = &spec.kafka_topic {
            return Err(Error::InvalidConfig {
                field: "kafka",
                reason: format!("topic {topic}: built without the `kafka` feature"),
            });
        }
        #[cfg(feature = "kafka")]
        let (ch, (ice, ice_from), kafka) = tokio::try_join!(ch, ice, kafka)?;
        #[cfg(not(feature = "kafka"))]
        let (ch, (ice, ice_from)) = tokio::try_join!(ch, ice)?;
        Ok(Gathered {
            ch,
            ice,
            ice_from,
            #[cfg(feature = "kafka")]
            kafka,
        })
    }
}

/// Loads the table between two reads of the sink's watermark that agree, so
/// no commit landed in between: the snapshot scanned holds exactly the rows
/// at or below that watermark. (Watermarks only grow, so equal reads mean no
/// commit.) Retries a few times while an offload is committing.
async fn load_between_equal_watermarks(
    layer: &IcebergLayer,
    ident: &TableIdent,
    sink: &dyn SinkTable,
) -> Result<(iceberg::table::Table, Option<Watermark>), Error> {
    let read = async || -> Result<Option<Watermark>, Error> {
        Ok(sink
            .committed()
            .await
            .map_err(|e| Error::Sink(Box::new(e)))?
            .map(|c| c.until))
    };
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let before = read().await?;
        let table = layer.load(ident).await?;
        if read().await? == before {
            return Ok((table, before));
        }
    }
    Err(Error::Unstable {
        what: format!("the committed watermark of {ident} ({ATTEMPTS} reads)"),
    })
}

pub(super) fn info(cols: &[(String, ColumnType, ContentKind)]) -> Vec<ColumnInfo> {
    cols.iter()
        .map(|(n, t, k)| ColumnInfo {
            name: n.clone(),
            clickhouse_type: t.text.clone(),
            kind: k.clone(),
        })
        .collect()
}
