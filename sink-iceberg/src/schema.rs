//! Arrow -> Iceberg: type mapping, compatibility with an existing table, and
//! conforming incoming batches to the table's Arrow form (field ids included).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{
    Array, ArrayRef, ListArray, MapArray, RecordBatch, RecordBatchOptions, StructArray, new_null_array,
};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{
    DataType, Field, FieldRef, Fields, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef, TimeUnit,
};
use iceberg::spec::{
    ListType, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema, StructType, Type,
};

use crate::IcebergSinkError;

/// Field-id counter for schemas we build; iceberg reassigns fresh ids on
/// table creation and on column addition, so these only need to be unique.
struct Ids(i32);

impl Ids {
    fn next(&mut self) -> i32 {
        self.0 += 1;
        self.0
    }
}

fn unsupported(column: &str, dt: &DataType, reason: &str) -> IcebergSinkError {
    IcebergSinkError::UnsupportedType {
        column: column.to_owned(),
        data_type: dt.to_string(),
        reason: reason.to_owned(),
    }
}

fn incompatible(column: &str, reason: impl Into<String>) -> IcebergSinkError {
    IcebergSinkError::IncompatibleSchema {
        column: column.to_owned(),
        reason: reason.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Maps one Arrow field's type to an Iceberg type (see the table in the crate docs).
fn iceberg_type(path: &str, field: &Field, ids: &mut Ids) -> Result<Type, IcebergSinkError> {
    use PrimitiveType as P;
    let dt = field.data_type();
    let prim = |p: P| Ok(Type::Primitive(p));
    match dt {
        DataType::Boolean => prim(P::Boolean),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            prim(P::Int)
        }
        DataType::Int64 | DataType::UInt32 => prim(P::Long),
        // Iceberg has no unsigned 64-bit type; decimal(20,0) holds every value exactly.
        DataType::UInt64 => prim(P::Decimal {
            precision: 20,
            scale: 0,
        }),
        DataType::Float16 | DataType::Float32 => prim(P::Float),
        DataType::Float64 => prim(P::Double),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            decimal(path, dt, *p, *s)
        }
        DataType::Decimal256(p, s) if *p <= 38 => decimal(path, dt, *p, *s),
        DataType::Decimal256(..) => Err(unsupported(
            path,
            dt,
            "Iceberg decimals hold at most 38 digits; cast to a narrower decimal or to string in the source query",
        )),
        DataType::Date32 | DataType::Date64 => prim(P::Date),
        DataType::Time32(_) | DataType::Time64(_) => prim(P::Time),
        DataType::Timestamp(_, None) => prim(P::Timestamp),
        DataType::Timestamp(_, Some(_)) => prim(P::Timestamptz),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => prim(P::String),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => prim(P::Binary),
        DataType::FixedSizeBinary(16)
            if field.metadata().get("ARROW:extension:name").map(String::as_str) == Some("arrow.uuid") =>
        {
            prim(P::Uuid)
        }
        DataType::FixedSizeBinary(n) if *n >= 0 => prim(P::Fixed(*n as u64)),
        DataType::List(elem) | DataType::LargeList(elem) | DataType::FixedSizeList(elem, _) => {
            let path = join(path, "element");
            let ty = iceberg_type(&path, elem, ids)?;
            Ok(Type::List(ListType::new(Arc::new(NestedField::list_element(
                ids.next(),
                ty,
                !elem.is_nullable(),
            )))))
        }
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(unsupported(path, dt, "map entries must be a struct"));
            };
            if kv.len() != 2 {
                return Err(unsupported(path, dt, "map entries must have exactly two fields"));
            }
            let key = iceberg_type(&join(path, "key"), &kv[0], ids)?;
            let value = iceberg_type(&join(path, "value"), &kv[1], ids)?;
            Ok(Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(ids.next(), key)),
                Arc::new(NestedField::map_value_element(
                    ids.next(),
                    value,
                    !kv[1].is_nullable(),
                )),
            )))
        }
        DataType::Struct(fields) => Ok(Type::Struct(StructType::new(struct_fields(path, fields, ids)?))),
        DataType::Dictionary(_, value) => {
            iceberg_type(path, &Field::new(field.name(), (**value).clone(), true), ids)
        }
        _ => Err(unsupported(
            path,
            dt,
            "no Iceberg counterpart (supported: booleans, integers, floats, decimals up to 38 digits, dates, times, \
             timestamps, strings, binaries, lists, maps, structs, dictionaries of those)",
        )),
    }
}

fn decimal(path: &str, dt: &DataType, p: u8, s: i8) -> Result<Type, IcebergSinkError> {
    if s < 0 || s as u8 > p {
        return Err(unsupported(
            path,
            dt,
            "Iceberg decimals need 0 <= scale <= precision",
        ));
    }
    Type::decimal(u32::from(p), s as u32).map_err(|e| unsupported(path, dt, &e.to_string()))
}

fn struct_fields(
    path: &str,
    fields: &Fields,
    ids: &mut Ids,
) -> Result<Vec<NestedFieldRef>, IcebergSinkError> {
    fields
        .iter()
        .map(|f| {
            let p = join(path, f.name());
            let ty = iceberg_type(&p, f, ids)?;
            Ok(Arc::new(NestedField::new(
                ids.next(),
                f.name(),
                ty,
                !f.is_nullable(),
            )))
        })
        .collect()
}

/// The Iceberg schema for a source Arrow schema: same names, same nullability,
/// fresh field ids. Fails with a typed error naming the first unsupported column.
pub(crate) fn iceberg_schema(source: &ArrowSchema) -> Result<Schema, IcebergSinkError> {
    let fields = struct_fields("", source.fields(), &mut Ids(0))?;
    Schema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| IcebergSinkError::iceberg("build the Iceberg schema", e))
}

/// One column the table lacks and the source has.
pub(crate) struct NewColumn {
    pub(crate) name: String,
    pub(crate) ty: Type,
}

/// Compares the source schema to the table's: returns the columns to add
/// (as optional), or the first incompatibility as a typed error naming the column.
pub(crate) fn plan_evolution(
    table: &Schema,
    source: &ArrowSchema,
) -> Result<Vec<NewColumn>, IcebergSinkError> {
    let mut ids = Ids(0);
    let mut new = Vec::new();
    for f in source.fields() {
        let ty = iceberg_type(f.name(), f, &mut ids)?;
        match table.as_struct().field_by_name(f.name()) {
            Some(target) => field_compatible(f.name(), &ty, f.is_nullable(), target)?,
            None => new.push(NewColumn {
                name: f.name().clone(),
                ty,
            }),
        }
    }
    for t in table.as_struct().fields() {
        if t.required && source.field_with_name(&t.name).is_err() {
            return Err(incompatible(
                &t.name,
                "the table column is required but the source no longer has it",
            ));
        }
    }
    Ok(new)
}

fn field_compatible(
    path: &str,
    src: &Type,
    src_nullable: bool,
    target: &NestedField,
) -> Result<(), IcebergSinkError> {
    if target.required && src_nullable {
        return Err(incompatible(
            path,
            "the source column is nullable but the table column is required",
        ));
    }
    type_compatible(path, src, &target.field_type)
}

fn type_compatible(path: &str, src: &Type, target: &Type) -> Result<(), IcebergSinkError> {
    use PrimitiveType as P;
    match (src, target) {
        (Type::Primitive(a), Type::Primitive(b)) => {
            // Iceberg's allowed type promotions, applied when writing.
            let ok = a == b
                || matches!((a, b), (P::Int, P::Long) | (P::Float, P::Double))
                || matches!((a, b), (P::Decimal { precision: p1, scale: s1 }, P::Decimal { precision: p2, scale: s2 })
                    if s1 == s2 && p2 >= p1);
            if ok {
                Ok(())
            } else {
                Err(incompatible(
                    path,
                    format!("source type {a} cannot be written to table type {b}"),
                ))
            }
        }
        (Type::Struct(a), Type::Struct(b)) => {
            for f in a.fields() {
                let p = join(path, &f.name);
                match b.field_by_name(&f.name) {
                    Some(t) => field_compatible(&p, &f.field_type, !f.required, t)?,
                    None => {
                        return Err(incompatible(
                            &p,
                            "new fields inside a struct are not added automatically; evolve the table first",
                        ));
                    }
                }
            }
            for t in b.fields() {
                if t.required && a.field_by_name(&t.name).is_none() {
                    return Err(incompatible(
                        &join(path, &t.name),
                        "the table field is required but the source struct no longer has it",
                    ));
                }
            }
            Ok(())
        }
        (Type::List(a), Type::List(b)) => field_compatible(
            &join(path, "element"),
            &a.element_field.field_type,
            !a.element_field.required,
            &b.element_field,
        ),
        (Type::Map(a), Type::Map(b)) => {
            type_compatible(
                &join(path, "key"),
                &a.key_field.field_type,
                &b.key_field.field_type,
            )?;
            field_compatible(
                &join(path, "value"),
                &a.value_field.field_type,
                !a.value_field.required,
                &b.value_field,
            )
        }
        (a, b) => Err(incompatible(
            path,
            format!("source type {a} cannot be written to table type {b}"),
        )),
    }
}

/// Rebuilds incoming batches in the exact Arrow form iceberg's Parquet writer
/// expects for the table schema: same column order, Iceberg's Arrow types,
/// `PARQUET:field_id` metadata on every (nested) field.
///
/// Columns whose type already matches are passed through without copying;
/// nested arrays are re-labelled (zero-copy) and only leaves whose physical
/// type differs are cast. Casts are checked: overflow is an error, never a null.
#[derive(Debug)]
pub(crate) struct Conformer {
    target: ArrowSchemaRef,
    /// Source schema the index below was computed for.
    source: ArrowSchemaRef,
    /// For each target column, its index in the source batch (None: write nulls).
    index: Vec<Option<usize>>,
}

impl Conformer {
    pub(crate) fn new(target: ArrowSchemaRef, source: ArrowSchemaRef) -> Result<Self, IcebergSinkError> {
        let index = Self::index(&target, &source)?;
        Ok(Self {
            target,
            source,
            index,
        })
    }

    fn index(target: &ArrowSchema, source: &ArrowSchema) -> Result<Vec<Option<usize>>, IcebergSinkError> {
        let by_name: HashMap<&str, usize> = source
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), i))
            .collect();
        for f in source.fields() {
            if target.field_with_name(f.name()).is_err() {
                return Err(incompatible(
                    f.name(),
                    "the column is not in the table: call prepare() first so it is added",
                ));
            }
        }
        target
            .fields()
            .iter()
            .map(|t| match by_name.get(t.name().as_str()) {
                Some(i) => Ok(Some(*i)),
                None if t.is_nullable() => Ok(None),
                None => Err(incompatible(
                    t.name(),
                    "required by the table but missing from the batch",
                )),
            })
            .collect()
    }

    /// Conforms one batch. Batches with a schema other than the one given at
    /// construction are matched by column name.
    pub(crate) fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch, IcebergSinkError> {
        let other;
        let index = if Arc::ptr_eq(&batch.schema(), &self.source)
            || batch.schema().fields() == self.source.fields()
        {
            &self.index
        } else {
            other = Self::index(&self.target, &batch.schema())?;
            &other
        };
        let rows = batch.num_rows();
        let columns = self
            .target
            .fields()
            .iter()
            .zip(index)
            .map(|(t, i)| match i {
                Some(i) => conform_array(t.name(), batch.column(*i), t.data_type()),
                None => Ok(new_null_array(t.data_type(), rows)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new_with_options(
            self.target.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| IcebergSinkError::arrow("assemble the batch in the table's schema", e))
    }
}

const CHECKED: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow_cast::display::FormatOptions::new(),
};

/// Converts `array` to `target`, recursing into nested types so field names
/// and field-id metadata come from the target while buffers are reused.
pub(crate) fn conform_array(
    path: &str,
    array: &ArrayRef,
    target: &DataType,
) -> Result<ArrayRef, IcebergSinkError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    let arrow_err = |e| IcebergSinkError::arrow(format!("convert column {path:?} to {target}"), e);
    match target {
        DataType::List(tf) => {
            let list = match array.data_type() {
                DataType::List(_) => array.clone(),
                DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                    cast_with_options(array, &DataType::List(f.clone()), &CHECKED).map_err(arrow_err)?
                }
                other => return Err(incompatible(path, format!("expected a list, got {other}"))),
            };
            let list = list.as_list::<i32>();
            let values = conform_array(&join(path, "element"), list.values(), tf.data_type())?;
            Ok(Arc::new(
                ListArray::try_new(tf.clone(), list.offsets().clone(), values, list.nulls().cloned())
                    .map_err(arrow_err)?,
            ))
        }
        DataType::Map(tf, ordered) => {
            let DataType::Map(..) = array.data_type() else {
                return Err(incompatible(
                    path,
                    format!("expected a map, got {}", array.data_type()),
                ));
            };
            let DataType::Struct(kv) = tf.data_type() else {
                return Err(incompatible(path, "table map entries are not a struct"));
            };
            let map = array.as_map();
            let keys = conform_array(&join(path, "key"), map.keys(), kv[0].data_type())?;
            let values = conform_array(&join(path, "value"), map.values(), kv[1].data_type())?;
            let entries = StructArray::try_new(kv.clone(), vec![keys, values], None).map_err(arrow_err)?;
            Ok(Arc::new(
                MapArray::try_new(
                    tf.clone(),
                    map.offsets().clone(),
                    entries,
                    map.nulls().cloned(),
                    *ordered,
                )
                .map_err(arrow_err)?,
            ))
        }
        DataType::Struct(tfields) => {
            let DataType::Struct(_) = array.data_type() else {
                return Err(incompatible(
                    path,
                    format!("expected a struct, got {}", array.data_type()),
                ));
            };
            let s = array.as_struct();
            let children = tfields
                .iter()
                .map(|tf: &FieldRef| match s.column_by_name(tf.name()) {
                    Some(c) => conform_array(&join(path, tf.name()), c, tf.data_type()),
                    None if tf.is_nullable() => Ok(new_null_array(tf.data_type(), s.len())),
                    None => Err(incompatible(
                        &join(path, tf.name()),
                        "required by the table but missing",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(
                StructArray::try_new(tfields.clone(), children, s.nulls().cloned()).map_err(arrow_err)?,
            ))
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => match array.data_type() {
            // Same values, other zone label: re-label without copying.
            DataType::Timestamp(TimeUnit::Microsecond, _) => Ok(Arc::new(
                array
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone_opt(tz.clone()),
            )),
            DataType::Timestamp(unit, _) => {
                // Convert the unit with the zone label unchanged (pure arithmetic), then re-label.
                let micros =
                    cast_with_options(array, &DataType::Timestamp(TimeUnit::Microsecond, None), &CHECKED)
                        .or_else(|_| {
                            // Some unit casts refuse zone-less targets for zoned sources; go through i64.
                            let raw = match unit {
                                TimeUnit::Second => array
                                    .as_primitive::<TimestampSecondType>()
                                    .reinterpret_cast::<arrow_array::types::Int64Type>(),
                                TimeUnit::Millisecond => array
                                    .as_primitive::<TimestampMillisecondType>()
                                    .reinterpret_cast(),
                                TimeUnit::Nanosecond => {
                                    array.as_primitive::<TimestampNanosecondType>().reinterpret_cast()
                                }
                                TimeUnit::Microsecond => unreachable!("handled above"),
                            };
                            let unzoned = arrow_cast::cast(&raw, &DataType::Timestamp(*unit, None))?;
                            cast_with_options(
                                &unzoned,
                                &DataType::Timestamp(TimeUnit::Microsecond, None),
                                &CHECKED,
                            )
                        })
                        .map_err(arrow_err)?;
                Ok(Arc::new(
                    micros
                        .as_primitive::<TimestampMicrosecondType>()
                        .clone()
                        .with_timezone_opt(tz.clone()),
                ))
            }
            other => Err(incompatible(path, format!("expected a timestamp, got {other}"))),
        },
        _ => cast_with_options(array, target, &CHECKED).map_err(arrow_err),
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::builder::{ListBuilder, MapBuilder, StringBuilder};
    use arrow_array::{
        Decimal128Array, DictionaryArray, Int32Array, Int64Array, TimestampMicrosecondArray,
        TimestampNanosecondArray, UInt64Array,
    };
    use arrow_schema::Schema as ArrowSchema;
    use iceberg::arrow::schema_to_arrow_schema;

    use super::*;

    fn trades_schema() -> ArrowSchema {
        ArrowSchema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("seq", DataType::UInt64, false),
            Field::new(
                "symbol",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("price", DataType::Decimal128(18, 8), false),
            Field::new("qty", DataType::Int32, true),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
            Field::new_map(
                "attrs",
                "entries",
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
                false,
                true,
            ),
        ])
    }

    #[test]
    fn mapping_keeps_names_nullability_and_assigns_unique_ids() {
        let s = iceberg_schema(&trades_schema()).unwrap();
        let f = |n: &str| s.as_struct().field_by_name(n).unwrap().clone();
        assert_eq!(*f("ts").field_type, Type::Primitive(PrimitiveType::Timestamptz));
        assert!(f("ts").required);
        assert_eq!(
            *f("seq").field_type,
            Type::Primitive(PrimitiveType::Decimal {
                precision: 20,
                scale: 0
            })
        );
        assert_eq!(*f("symbol").field_type, Type::Primitive(PrimitiveType::String));
        assert!(!f("qty").required);
        let Type::List(l) = &*f("tags").field_type else {
            panic!()
        };
        assert!(!l.element_field.required);
        let Type::Map(m) = &*f("attrs").field_type else {
            panic!()
        };
        assert!(!m.value_field.required);
        // ids unique across nesting
        fn collect(t: &Type, out: &mut Vec<i32>) {
            match t {
                Type::Struct(s) => s.fields().iter().for_each(|f| {
                    out.push(f.id);
                    collect(&f.field_type, out)
                }),
                Type::List(l) => {
                    out.push(l.element_field.id);
                    collect(&l.element_field.field_type, out)
                }
                Type::Map(m) => {
                    out.push(m.key_field.id);
                    out.push(m.value_field.id);
                    collect(&m.value_field.field_type, out)
                }
                Type::Primitive(_) => {}
            }
        }
        let mut ids = Vec::new();
        collect(&Type::Struct(s.as_struct().clone()), &mut ids);
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn unsupported_types_name_the_column() {
        let s = ArrowSchema::new(vec![Field::new("wide", DataType::Decimal256(60, 2), true)]);
        match iceberg_schema(&s) {
            Err(IcebergSinkError::UnsupportedType { column, .. }) => assert_eq!(column, "wide"),
            other => panic!("{other:?}"),
        }
        let s = ArrowSchema::new(vec![Field::new(
            "d",
            DataType::Struct(vec![Field::new("x", DataType::Duration(TimeUnit::Second), true)].into()),
            true,
        )]);
        match iceberg_schema(&s) {
            Err(IcebergSinkError::UnsupportedType { column, .. }) => assert_eq!(column, "d.x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn evolution_adds_new_columns_and_refuses_incompatible_ones() {
        let table = iceberg_schema(&trades_schema()).unwrap();
        let mut fields: Vec<Field> = trades_schema().fields().iter().map(|f| (**f).clone()).collect();
        fields.push(Field::new("venue", DataType::Utf8, true));
        let new = plan_evolution(&table, &ArrowSchema::new(fields.clone())).unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].name, "venue");

        // int -> long is a promotion: fine
        let t2 = iceberg_schema(&ArrowSchema::new(vec![Field::new("q", DataType::Int64, true)])).unwrap();
        assert!(
            plan_evolution(
                &t2,
                &ArrowSchema::new(vec![Field::new("q", DataType::Int32, true)])
            )
            .is_ok()
        );

        // price as string: refused, naming the column
        fields[3] = Field::new("price", DataType::Utf8, false);
        match plan_evolution(&table, &ArrowSchema::new(fields.clone())) {
            Err(IcebergSinkError::IncompatibleSchema { column, .. }) => assert_eq!(column, "price"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        // nullable into required: refused
        fields[3] = Field::new("price", DataType::Decimal128(18, 8), true);
        match plan_evolution(&table, &ArrowSchema::new(fields.clone())) {
            Err(IcebergSinkError::IncompatibleSchema { column, .. }) => assert_eq!(column, "price"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        // a required table column missing from the source: refused
        fields.remove(3);
        match plan_evolution(&table, &ArrowSchema::new(fields)) {
            Err(IcebergSinkError::IncompatibleSchema { column, .. }) => assert_eq!(column, "price"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
    }

    fn sample(schema: &ArrowSchemaRef) -> RecordBatch {
        let mut tags = ListBuilder::new(StringBuilder::new());
        tags.values().append_value("a");
        tags.values().append_null();
        tags.append(true);
        tags.append(false);
        let mut attrs = MapBuilder::new(
            Some(arrow_array::builder::MapFieldNames {
                entry: "entries".into(),
                key: "keys".into(),
                value: "values".into(),
            }),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        attrs.keys().append_value("k");
        attrs.values().append_value("v");
        attrs.append(true).unwrap();
        attrs.append(true).unwrap();
        let dict: DictionaryArray<arrow_array::types::Int32Type> = vec!["BTC", "ETH"].into_iter().collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2]).with_timezone("UTC")),
                Arc::new(UInt64Array::from(vec![u64::MAX, 7])),
                Arc::new(dict),
                Arc::new(
                    Decimal128Array::from(vec![123_456_789, -1])
                        .with_precision_and_scale(18, 8)
                        .unwrap(),
                ),
                Arc::new(Int32Array::from(vec![Some(1), None])),
                Arc::new(tags.finish()),
                Arc::new(attrs.finish()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn conform_produces_the_writers_schema_with_field_ids() {
        let source = Arc::new(trades_schema());
        let table = iceberg_schema(&source).unwrap();
        let target = Arc::new(schema_to_arrow_schema(&table).unwrap());
        let c = Conformer::new(target.clone(), source.clone()).unwrap();
        let src = sample(&source);
        let out = c.conform(&src).unwrap();
        assert_eq!(out.schema(), target);
        assert!(out.schema().field(0).metadata().contains_key("PARQUET:field_id"));
        let seq = out.column(1).as_primitive::<arrow_array::types::Decimal128Type>();
        assert_eq!(seq.value(0), u64::MAX as i128);
        assert_eq!(out.column(2).as_string::<i32>().value(1), "ETH");
        let tags = out.column(5).as_list::<i32>();
        assert!(tags.is_null(1));
        assert_eq!(tags.value(0).len(), 2);
        // Columns already in the table's type are passed through without copying.
        assert_eq!(
            out.column(3).to_data().buffers()[0].as_ptr(),
            src.column(3).to_data().buffers()[0].as_ptr()
        );
        assert_eq!(
            out.column(0).to_data().buffers()[0].as_ptr(),
            src.column(0).to_data().buffers()[0].as_ptr()
        );
    }

    #[test]
    fn timestamps_change_unit_and_zone_label() {
        let ns: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![1_500, -2_000]).with_timezone("Europe/Paris"));
        let out = conform_array(
            "ts",
            &ns,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        )
        .unwrap();
        let out = out.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(out.values().to_vec(), vec![1, -2]);
        assert_eq!(out.timezone(), Some("+00:00"));
    }

    #[test]
    fn overflowing_casts_fail_instead_of_writing_nulls() {
        let big: ArrayRef = Arc::new(Int64Array::from(vec![i64::MAX]));
        assert!(conform_array("x", &big, &DataType::Int32).is_err());
    }
}
