//! The Iceberg layer: the same per-bucket figures as ClickHouse computes,
//! computed here in Rust from a scan that is pruned to the time range (by
//! partition and Parquet statistics) and projected to the needed columns only;
//! row counts straight from the manifests when that suffices.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{Literal, PrimitiveLiteral, PrimitiveType, Transform, Type};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use offload_core::Watermark;

use crate::fingerprint::{ContentKind, RowHasher, key_hash};
use crate::report::{ExactSum, Figures};
use crate::{Bucket, Error, TimeRange};

use offload_sink_iceberg::{DEFAULT_NAMESPACE, TableName};
/// The metadata keys `offload-sink-iceberg` records the committed watermark
/// under: the `until` of the nearest snapshot of ours on main's ancestry
/// ([`SUMMARY_WINDOW_UNTIL`]), else the table property ([`PROPERTY_WATERMARK`]).
pub use offload_sink_iceberg::{PROPERTY_WATERMARK, SUMMARY_WINDOW_UNTIL};

/// Iceberg as a reconciliation layer: a catalog to load tables from, and the
/// namespace of table names given without one.
///
/// ```no_run
/// # async fn f(catalog: std::sync::Arc<dyn iceberg::Catalog>) {
/// // Bare names resolve in offload_sink_iceberg::DEFAULT_NAMESPACE ("offload"),
/// // where the sink puts them.
/// let layer = offload_reconcile::IcebergLayer::new(catalog);
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct IcebergLayer {
    catalog: Arc<dyn Catalog>,
    default_namespace: String,
}

/// What to compute for a table on the Iceberg side.
#[derive(Clone, Debug)]
pub(crate) struct IcePlan {
    pub ts: String,
    pub seq: String,
    pub content: Vec<(String, ContentKind)>,
    pub sums: Vec<(String, ContentKind)>,
    pub range: TimeRange,
    pub full: bool,
}

impl IcebergLayer {
    /// Wraps a catalog (SQL, REST, memory, ...); table names without a namespace
    /// resolve in [`DEFAULT_NAMESPACE`] (`offload`), as the sink's do by default.
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self {
            catalog,
            default_namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }

    /// Table names without a namespace resolve in `namespace` (set it to the
    /// sink's `default_namespace` when that is not the default).
    pub fn with_default_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.default_namespace = namespace.into();
        self
    }

    /// The namespace of table names given without one.
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The identifier of `name` (`table`, `namespace.table` or
    /// `ns1.ns2.table`), parsed by the sink's own rules ([`TableName`]).
    ///
    /// ```no_run
    /// # fn f(catalog: std::sync::Arc<dyn iceberg::Catalog>) {
    /// let layer = offload_reconcile::IcebergLayer::new(catalog);
    /// assert_eq!(layer.ident("trades").unwrap().to_string(), "offload.trades");
    /// # }
    /// ```
    pub fn ident(&self, name: &str) -> Result<TableIdent, Error> {
        ident_in(name, &self.default_namespace)
    }

    /// Loads a table.
    pub(crate) async fn load(&self, ident: &TableIdent) -> Result<Table, Error> {
        self.catalog
            .load_table(ident)
            .await
            .map_err(Error::iceberg(format!("load table {ident}")))
    }
}

/// `name` as the sink resolves it, with `default_namespace` for a bare name.
fn ident_in(name: &str, default_namespace: &str) -> Result<TableIdent, Error> {
    TableName::parse(name, default_namespace).map_err(|e| Error::InvalidConfig {
        field: "iceberg table",
        reason: e.to_string(),
    })
}

/// The column names of the table's current schema.
pub(crate) fn column_names(table: &Table) -> Vec<String> {
    table
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

/// The committed watermark recorded in the table's metadata, read by the sink's
/// own logic so reconciliation and the commit fence can never disagree.
pub(crate) fn committed_from_metadata(table: &Table) -> Result<Option<Watermark>, Error> {
    offload_sink_iceberg::committed_window(table.metadata())
        .map(|w| w.map(|w| w.until))
        .map_err(|e| Error::Sink(Box::new(e.into())))
}

/// A predicate `start <= ts < end` in the column's own type, so the scan
/// prunes partitions (day/hour of ts) and row groups (min/max statistics).
fn range_predicate(table: &Table, ts: &str, start: i64, end: i64) -> Result<Predicate, Error> {
    let schema = table.metadata().current_schema();
    let field = schema.field_by_name(ts).ok_or_else(|| Error::MissingColumn {
        layer: "Iceberg",
        table: table.identifier().to_string(),
        column: ts.to_owned(),
    })?;
    let datum = |v: i64| -> Result<iceberg::spec::Datum, Error> {
        let nanos = || {
            v.checked_mul(1000).ok_or_else(|| Error::InvalidConfig {
                field: "range",
                reason: "outside the nanosecond timestamp range".into(),
            })
        };
        Ok(match field.field_type.as_ref() {
            Type::Primitive(PrimitiveType::Timestamp) => iceberg::spec::Datum::timestamp_micros(v),
            Type::Primitive(PrimitiveType::Timestamptz) => iceberg::spec::Datum::timestamptz_micros(v),
            Type::Primitive(PrimitiveType::TimestampNs) => iceberg::spec::Datum::timestamp_nanos(nanos()?),
            Type::Primitive(PrimitiveType::TimestamptzNs) => {
                iceberg::spec::Datum::timestamptz_nanos(nanos()?)
            }
            other => {
                return Err(Error::UnsupportedColumn {
                    column: ts.to_owned(),
                    type_name: other.to_string(),
                    role: "timestamp",
                    reason: "expected an Iceberg timestamp or timestamptz".into(),
                });
            }
        })
    };
    Ok(Reference::new(ts)
        .greater_than_or_equal_to(datum(start)?)
        .and(Reference::new(ts).less_than(datum(end)?)))
}

/// Per-bucket accumulator.
#[derive(Default)]
struct Acc {
    rows: u64,
    key_fp: u64,
    content_fp: u64,
    sums: Vec<i128>,
    keys: Vec<(i64, u64)>,
}

/// Row counts per bucket from the manifests, without reading data files, when
/// they suffice: one partition spec with an `hour` or `day` transform of the
/// timestamp column no coarser than the bucket, no delete files, and a record
/// count on every file. `None` when they do not.
pub(crate) async fn manifest_counts(
    table: &Table,
    ts: &str,
    range: TimeRange,
) -> Result<Option<BTreeMap<i64, Figures>>, Error> {
    let meta = table.metadata();
    if meta.partition_specs_iter().len() != 1 {
        return Ok(None);
    }
    let Some(field) = meta.current_schema().field_by_name(ts) else {
        return Ok(None);
    };
    let spec = meta.default_partition_spec();
    let found = spec.fields().iter().enumerate().find_map(|(i, f)| {
        let width: i64 = match f.transform {
            Transform::Hour => 3_600_000_000,
            Transform::Day => 86_400_000_000,
            _ => return None,
        };
        (f.source_id == field.id).then_some((i, width))
    });
    let Some((index, width)) = found else {
        return Ok(None);
    };
    if range.size().micros() % width != 0 {
        return Ok(None);
    }
    let scan = table
        .scan()
        .select([ts])
        .with_filter(range_predicate(table, ts, range.start(), range.end())?)
        .build()
        .map_err(Error::iceberg("plan a manifest scan"))?;
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .map_err(Error::iceberg("plan files"))?
        .try_collect()
        .await
        .map_err(Error::iceberg("plan files"))?;
    let mut out: BTreeMap<i64, Figures> = BTreeMap::new();
    for t in tasks {
        let (Some(count), true) = (t.record_count, t.deletes.is_empty()) else {
            return Ok(None);
        };
        let value = t
            .partition
            .as_ref()
            .and_then(|p| p.fields().get(index).cloned().flatten());
        let Some(Literal::Primitive(PrimitiveLiteral::Int(v))) = value else {
            return Ok(None);
        };
        let start = i64::from(v) * width;
        if let Some(b) = range.bucket_of(start) {
            out.entry(b.start).or_default().rows += count;
        }
    }
    Ok(Some(out))
}

/// Scans the range and computes the figures of every non-empty bucket.
pub(crate) async fn figures(table: &Table, plan: &IcePlan) -> Result<BTreeMap<i64, Figures>, Error> {
    let mut cols = vec![plan.ts.clone()];
    if plan.full {
        cols.push(plan.seq.clone());
        for (c, _) in plan.content.iter().chain(&plan.sums) {
            if !cols.contains(c) {
                cols.push(c.clone());
            }
        }
    }
    let stream = scan(table, plan, &cols, plan.range.start(), plan.range.end()).await?;
    let mut accs: BTreeMap<usize, Acc> = BTreeMap::new();
    let mut hasher = RowHasher::default();
    futures::pin_mut!(stream);
    while let Some(batch) = stream.try_next().await.map_err(Error::iceberg("read data"))? {
        accumulate(&batch, plan, &mut accs, &mut hasher)?;
    }
    let mut out = BTreeMap::new();
    for (i, mut acc) in accs {
        let mut f = Figures::counted(acc.rows);
        if plan.full {
            acc.keys.sort_unstable();
            acc.keys.dedup();
            f.distinct_keys = Some(acc.keys.len() as u64);
            f.key_fingerprint = Some(acc.key_fp);
            f.content_fingerprint = Some(acc.content_fp);
            for ((name, kind), v) in plan.sums.iter().zip(&acc.sums) {
                f.sums.insert(name.clone(), ExactSum::new(*v, kind.scale()));
            }
        }
        out.insert(plan.range.bucket(i).start, f);
    }
    Ok(out)
}

/// Every `(ts, seq, row_hash)` of one bucket, sorted.
pub(crate) async fn keys(
    table: &Table,
    plan: &IcePlan,
    bucket: Bucket,
) -> Result<Vec<(i64, u64, u64)>, Error> {
    let mut cols = vec![plan.ts.clone(), plan.seq.clone()];
    for (c, _) in &plan.content {
        if !cols.contains(c) {
            cols.push(c.clone());
        }
    }
    let stream = scan(table, plan, &cols, bucket.start, bucket.end).await?;
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    let mut h = RowHasher::default();
    while let Some(batch) = stream.try_next().await.map_err(Error::iceberg("read data"))? {
        let ts = timestamps(column(&batch, &plan.ts)?, &plan.ts)?;
        let seq = sequences(column(&batch, &plan.seq)?, &plan.seq)?;
        let content = content_columns(&batch, &plan.content)?;
        for i in 0..batch.num_rows() {
            if !bucket.contains(ts[i]) {
                continue;
            }
            h.begin(ts[i], seq[i]);
            for c in &content {
                c.encode(i, &mut h);
            }
            out.push((ts[i], seq[i], h.finish()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

async fn scan(
    table: &Table,
    plan: &IcePlan,
    cols: &[String],
    start: i64,
    end: i64,
) -> Result<iceberg::scan::ArrowRecordBatchStream, Error> {
    table
        .scan()
        .select(cols.iter())
        .with_filter(range_predicate(table, &plan.ts, start, end)?)
        .with_batch_size(Some(64 * 1024))
        .build()
        .map_err(Error::iceberg("plan the scan"))?
        .to_arrow()
        .await
        .map_err(Error::iceberg("start the scan"))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, Error> {
    batch.column_by_name(name).ok_or_else(|| Error::MissingColumn {
        layer: "Iceberg",
        table: "scan result".into(),
        column: name.to_owned(),
    })
}

fn accumulate(
    batch: &RecordBatch,
    plan: &IcePlan,
    accs: &mut BTreeMap<usize, Acc>,
    h: &mut RowHasher,
) -> Result<(), Error> {
    let ts = timestamps(column(batch, &plan.ts)?, &plan.ts)?;
    if !plan.full {
        for t in ts {
            if let Some(i) = plan.range.index_of(t) {
                accs.entry(i).or_default().rows += 1;
            }
        }
        return Ok(());
    }
    let seq = sequences(column(batch, &plan.seq)?, &plan.seq)?;
    let content = content_columns(batch, &plan.content)?;
    let sums: Vec<Vec<Option<i128>>> = plan
        .sums
        .iter()
        .map(|(name, kind)| {
            let a = column(batch, name)?;
            match kind {
                ContentKind::Decimal { scale } => decimals(a, name, *scale),
                _ => ints(a, name),
            }
        })
        .collect::<Result<_, _>>()?;
    for i in 0..batch.num_rows() {
        let Some(b) = plan.range.index_of(ts[i]) else {
            continue;
        };
        let acc = accs.entry(b).or_insert_with(|| Acc {
            sums: vec![0; plan.sums.len()],
            ..Acc::default()
        });
        acc.rows += 1;
        acc.key_fp = acc.key_fp.wrapping_add(key_hash(ts[i], seq[i]));
        h.begin(ts[i], seq[i]);
        for c in &content {
            c.encode(i, h);
        }
        acc.content_fp = acc.content_fp.wrapping_add(h.finish());
        for (k, s) in sums.iter().enumerate() {
            if let Some(v) = s[i] {
                acc.sums[k] = acc.sums[k].checked_add(v).ok_or_else(|| Error::SumOverflow {
                    column: plan.sums[k].0.clone(),
                })?;
            }
        }
        acc.keys.push((ts[i], seq[i]));
    }
    Ok(())
}

fn unsupported(name: &str, a: &dyn Array, role: &'static str, reason: &str) -> Error {
    Error::UnsupportedColumn {
        column: name.to_owned(),
        type_name: a.data_type().to_string(),
        role,
        reason: reason.to_owned(),
    }
}

/// Microseconds since the epoch, floored; NULL is refused (keys are never NULL).
fn timestamps(a: &ArrayRef, name: &str) -> Result<Vec<i64>, Error> {
    if a.null_count() > 0 {
        return Err(unsupported(name, a.as_ref(), "timestamp", "holds NULLs"));
    }
    opt_timestamps(a, name, "timestamp").map(|v| v.into_iter().map(|x| x.unwrap_or_default()).collect())
}

fn opt_timestamps(a: &ArrayRef, name: &str, role: &'static str) -> Result<Vec<Option<i64>>, Error> {
    Ok(match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => a
            .as_primitive::<TimestampSecondType>()
            .iter()
            .map(|v| v.map(|v| v.saturating_mul(1_000_000)))
            .collect(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => a
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .map(|v| v.map(|v| v.saturating_mul(1_000)))
            .collect(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            a.as_primitive::<TimestampMicrosecondType>().iter().collect()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => a
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .map(|v| v.map(|v| v.div_euclid(1_000)))
            .collect(),
        _ => return Err(unsupported(name, a.as_ref(), role, "expected a timestamp")),
    })
}

/// Sequences as u64 (signed values wrap like ClickHouse's reinterpretAsUInt64).
fn sequences(a: &ArrayRef, name: &str) -> Result<Vec<u64>, Error> {
    if a.null_count() > 0 {
        return Err(unsupported(name, a.as_ref(), "sequence", "holds NULLs"));
    }
    let v = ints(a, name)?;
    v.into_iter()
        .map(|x| {
            let x = x.unwrap_or_default();
            // Negative values wrap (two's complement), like ClickHouse's
            // reinterpretAsUInt64(toInt64(seq)); the u64 range is itself.
            match i64::try_from(x) {
                Ok(v) if v < 0 => Ok(v as u64),
                _ => u64::try_from(x)
                    .map_err(|_| unsupported(name, a.as_ref(), "sequence", "value outside the 64-bit range")),
            }
        })
        .collect()
}

fn prim<T: arrow_array::ArrowPrimitiveType>(
    a: &ArrayRef,
    f: impl Fn(T::Native) -> i128,
) -> Vec<Option<i128>> {
    a.as_primitive::<T>().iter().map(|v| v.map(&f)).collect()
}

/// Integers (any width, Bool, Decimal with scale 0) as i128.
fn ints(a: &ArrayRef, name: &str) -> Result<Vec<Option<i128>>, Error> {
    Ok(match a.data_type() {
        DataType::Int8 => prim::<Int8Type>(a, i128::from),
        DataType::Int16 => prim::<Int16Type>(a, i128::from),
        DataType::Int32 => prim::<Int32Type>(a, i128::from),
        DataType::Int64 => prim::<Int64Type>(a, i128::from),
        DataType::UInt8 => prim::<UInt8Type>(a, i128::from),
        DataType::UInt16 => prim::<UInt16Type>(a, i128::from),
        DataType::UInt32 => prim::<UInt32Type>(a, i128::from),
        DataType::UInt64 => prim::<UInt64Type>(a, i128::from),
        DataType::Boolean => a.as_boolean().iter().map(|v| v.map(i128::from)).collect(),
        DataType::Decimal128(_, 0) => prim::<Decimal128Type>(a, |v| v),
        _ => return Err(unsupported(name, a.as_ref(), "content", "expected an integer")),
    })
}

/// Decimals as unscaled i128 at `scale` (a smaller Arrow scale is widened exactly).
fn decimals(a: &ArrayRef, name: &str, scale: u8) -> Result<Vec<Option<i128>>, Error> {
    let DataType::Decimal128(_, s) = a.data_type() else {
        if scale == 0 {
            return ints(a, name);
        }
        return Err(unsupported(name, a.as_ref(), "content", "expected a decimal"));
    };
    let (s, want) = (i32::from(*s), i32::from(scale));
    if s > want || s < 0 {
        return Err(unsupported(
            name,
            a.as_ref(),
            "content",
            &format!("scale {s} cannot be compared with ClickHouse's scale {want}"),
        ));
    }
    let factor = 10i128
        .checked_pow((want - s) as u32)
        .ok_or_else(|| unsupported(name, a.as_ref(), "content", "scale gap too large"))?;
    a.as_primitive::<Decimal128Type>()
        .iter()
        .map(|v| {
            v.map(|v| {
                v.checked_mul(factor)
                    .ok_or_else(|| unsupported(name, a.as_ref(), "content", "rescaled value overflows"))
            })
            .transpose()
        })
        .collect()
}

/// One content column of a batch (or a nested child array), ready to encode
/// row by row with the rules of [`ContentKind`].
enum Content<'a> {
    Int(Vec<Option<i128>>),
    Float(Vec<Option<f64>>),
    Timestamp(Vec<Option<i64>>),
    Date(Vec<Option<i32>>),
    Bytes(&'a dyn Array, fn(&dyn Array, usize) -> &[u8]),
    /// A list column: `(start, end)` element range of row `i` in `elements`.
    List {
        array: &'a dyn Array,
        offsets: Vec<(usize, usize)>,
        elements: Box<Content<'a>>,
    },
    Map {
        array: &'a dyn Array,
        offsets: Vec<(usize, usize)>,
        keys: Box<Content<'a>>,
        values: Box<Content<'a>>,
    },
    Tuple {
        array: &'a dyn Array,
        fields: Vec<Content<'a>>,
    },
}

impl Content<'_> {
    fn encode(&self, i: usize, h: &mut RowHasher) {
        match self {
            Content::Int(v) => match v[i] {
                Some(x) => h.int(x),
                None => h.null(),
            },
            Content::Float(v) => match v[i] {
                Some(x) => h.float(x),
                None => h.null(),
            },
            Content::Timestamp(v) => match v[i] {
                Some(x) => h.timestamp(x),
                None => h.null(),
            },
            Content::Date(v) => match v[i] {
                Some(x) => h.date(x),
                None => h.null(),
            },
            Content::Bytes(a, get) => {
                if a.is_null(i) {
                    h.null();
                } else {
                    h.bytes(get(*a, i));
                }
            }
            Content::List {
                array,
                offsets,
                elements,
            } => {
                if array.is_null(i) {
                    return h.null();
                }
                let (start, end) = offsets[i];
                h.begin_list(end - start);
                for j in start..end {
                    elements.encode(j, h);
                }
            }
            Content::Map {
                array,
                offsets,
                keys,
                values,
            } => {
                if array.is_null(i) {
                    return h.null();
                }
                let (start, end) = offsets[i];
                let m = h.begin_map(end - start);
                for j in start..end {
                    let e = h.begin_entry();
                    keys.encode(j, h);
                    values.encode(j, h);
                    h.end_entry(e);
                }
                h.end_map(m);
            }
            Content::Tuple { array, fields } => {
                if array.is_null(i) {
                    return h.null();
                }
                h.begin_tuple();
                for f in fields {
                    f.encode(i, h);
                }
            }
        }
    }
}

fn content_columns<'a>(
    batch: &'a RecordBatch,
    cols: &[(String, ContentKind)],
) -> Result<Vec<Content<'a>>, Error> {
    cols.iter()
        .map(|(name, kind)| content(column(batch, name)?, name, kind))
        .collect()
}

/// `(start, end)` of every list of an offsets buffer.
fn ranges<O: arrow_array::OffsetSizeTrait>(offsets: &[O]) -> Vec<(usize, usize)> {
    offsets
        .windows(2)
        .map(|w| (w[0].as_usize(), w[1].as_usize()))
        .collect()
}

/// The encoder of one array (a column, or the child of a nested one named by
/// its path, e.g. `tags.element`) for `kind`.
fn content<'a>(a: &'a ArrayRef, name: &str, kind: &ContentKind) -> Result<Content<'a>, Error> {
    Ok(match kind {
        ContentKind::Int => Content::Int(ints(a, name)?),
        ContentKind::Decimal { scale } => Content::Int(decimals(a, name, *scale)?),
        ContentKind::Float => Content::Float(match a.data_type() {
            DataType::Float32 => a
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.map(f64::from))
                .collect(),
            DataType::Float64 => a.as_primitive::<Float64Type>().iter().collect(),
            _ => return Err(unsupported(name, a.as_ref(), "content", "expected a float")),
        }),
        ContentKind::Timestamp => Content::Timestamp(opt_timestamps(a, name, "content")?),
        ContentKind::Date => Content::Date(match a.data_type() {
            DataType::Date32 => a.as_primitive::<Date32Type>().iter().collect(),
            DataType::Date64 => a
                .as_primitive::<Date64Type>()
                .iter()
                .map(|v| v.map(|ms| ms.div_euclid(86_400_000) as i32))
                .collect(),
            _ => return Err(unsupported(name, a.as_ref(), "content", "expected a date")),
        }),
        ContentKind::String => {
            let get: fn(&dyn Array, usize) -> &[u8] = match a.data_type() {
                DataType::Utf8 => |a, i| a.as_string::<i32>().value(i).as_bytes(),
                DataType::LargeUtf8 => |a, i| a.as_string::<i64>().value(i).as_bytes(),
                DataType::Utf8View => |a, i| a.as_string_view().value(i).as_bytes(),
                DataType::Binary => |a, i| a.as_binary::<i32>().value(i),
                DataType::LargeBinary => |a, i| a.as_binary::<i64>().value(i),
                DataType::BinaryView => |a, i| a.as_binary_view().value(i),
                DataType::FixedSizeBinary(_) => |a, i| a.as_fixed_size_binary().value(i),
                _ => {
                    return Err(unsupported(
                        name,
                        a.as_ref(),
                        "content",
                        "expected a string or binary",
                    ));
                }
            };
            Content::Bytes(a.as_ref(), get)
        }
        ContentKind::Array { element } => {
            let (offsets, values) = match a.data_type() {
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    (ranges(l.value_offsets()), l.values())
                }
                DataType::LargeList(_) => {
                    let l = a.as_list::<i64>();
                    (ranges(l.value_offsets()), l.values())
                }
                DataType::FixedSizeList(_, n) => {
                    let l = a.as_fixed_size_list();
                    let n = usize::try_from(*n).unwrap_or_default();
                    ((0..l.len()).map(|i| (i * n, (i + 1) * n)).collect(), l.values())
                }
                _ => return Err(unsupported(name, a.as_ref(), "content", "expected a list")),
            };
            Content::List {
                array: a.as_ref(),
                offsets,
                elements: Box::new(content(values, &format!("{name}.element"), element)?),
            }
        }
        ContentKind::Map { key, value } => {
            let DataType::Map(..) = a.data_type() else {
                return Err(unsupported(name, a.as_ref(), "content", "expected a map"));
            };
            let m = a.as_map();
            Content::Map {
                array: a.as_ref(),
                offsets: ranges(m.value_offsets()),
                keys: Box::new(content(m.keys(), &format!("{name}.key"), key)?),
                values: Box::new(content(m.values(), &format!("{name}.value"), value)?),
            }
        }
        ContentKind::Tuple { fields } => {
            let DataType::Struct(_) = a.data_type() else {
                return Err(unsupported(name, a.as_ref(), "content", "expected a struct"));
            };
            let st = a.as_struct();
            if st.num_columns() != fields.len() {
                return Err(unsupported(
                    name,
                    a.as_ref(),
                    "content",
                    &format!("expected a struct of {} fields", fields.len()),
                ));
            }
            // By position: the offload keeps ClickHouse's field order.
            Content::Tuple {
                array: a.as_ref(),
                fields: st
                    .columns()
                    .iter()
                    .zip(st.column_names())
                    .zip(fields)
                    .map(|((c, n), k)| content(c, &format!("{name}.{n}"), k))
                    .collect::<Result<_, _>>()?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Decimal128Array, Int64Array, TimestampNanosecondArray, UInt64Array};

    use super::*;

    #[test]
    fn sequences_wrap_like_clickhouse() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![-1, 0, i64::MAX]));
        assert_eq!(sequences(&a, "s").unwrap(), vec![u64::MAX, 0, i64::MAX as u64]);
        let a: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX]));
        assert_eq!(sequences(&a, "s").unwrap(), vec![u64::MAX]);
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![i128::from(u64::MAX)])
                .with_precision_and_scale(20, 0)
                .unwrap(),
        );
        assert_eq!(sequences(&a, "s").unwrap(), vec![u64::MAX]);
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![i128::from(u64::MAX) + 1])
                .with_precision_and_scale(38, 0)
                .unwrap(),
        );
        assert!(sequences(&a, "s").is_err());
    }

    #[test]
    fn nanoseconds_floor_towards_the_past() {
        let a: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![-1, 1_999, -1_000]));
        assert_eq!(timestamps(&a, "t").unwrap(), vec![-1, 1, -1]);
    }

    #[test]
    fn decimals_rescale_only_exactly() {
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(15), None])
                .with_precision_and_scale(10, 1)
                .unwrap(),
        );
        assert_eq!(decimals(&a, "d", 3).unwrap(), vec![Some(1500), None]);
        assert!(decimals(&a, "d", 0).is_err());
    }

    /// The row hashes of every row of `a` encoded as `kind`.
    fn hashes(a: &ArrayRef, kind: &ContentKind) -> Vec<u64> {
        let c = content(a, "c", kind).unwrap();
        let mut h = RowHasher::default();
        (0..a.len())
            .map(|i| {
                h.begin(0, 0);
                c.encode(i, &mut h);
                h.finish()
            })
            .collect()
    }

    #[test]
    fn every_arrow_list_layout_encodes_like_the_definition() {
        use arrow_array::types::Int32Type;
        use arrow_array::{FixedSizeListArray, LargeListArray, ListArray};

        use crate::fingerprint::{Value, row_hash};
        let rows = vec![Some(vec![Some(1), None]), None, Some(vec![Some(-3), Some(4)])];
        let want: Vec<u64> = rows
            .iter()
            .map(|r| {
                let v = match r {
                    None => Value::Null,
                    Some(e) => Value::Array(
                        e.iter()
                            .map(|x| x.map_or(Value::Null, |x| Value::Int(x.into())))
                            .collect(),
                    ),
                };
                row_hash(0, 0, &[v])
            })
            .collect();
        let kind = ContentKind::Array {
            element: Box::new(ContentKind::Int),
        };
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(rows.clone()));
        let large: ArrayRef = Arc::new(LargeListArray::from_iter_primitive::<Int32Type, _, _>(
            rows.clone(),
        ));
        let fixed: ArrayRef = Arc::new(FixedSizeListArray::from_iter_primitive::<Int32Type, _, _>(
            rows, 2,
        ));
        for a in [&list, &large, &fixed] {
            assert_eq!(hashes(a, &kind), want, "{}", a.data_type());
        }
        // A slice starts at its own first row.
        assert_eq!(hashes(&list.slice(1, 2), &kind), want[1..]);
        // The wrong shape is refused, not guessed at.
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        assert!(content(&ints, "c", &kind).is_err());
    }

    #[test]
    fn idents_resolve_like_the_sinks() {
        // What `offload` writes for a bare name is where reconcile looks.
        assert_eq!(ident_in("t", DEFAULT_NAMESPACE).unwrap().to_string(), "offload.t");
        assert_eq!(DEFAULT_NAMESPACE, "offload");
        assert_eq!(ident_in("t", "lake").unwrap().to_string(), "lake.t");
        assert_eq!(ident_in("a.b", "lake").unwrap().to_string(), "a.b");
        assert_eq!(ident_in("a.b.c", "lake").unwrap().name(), "c");
        assert!(ident_in("ns.", "lake").is_err());
        assert!(ident_in("", "lake").is_err());
    }
}
