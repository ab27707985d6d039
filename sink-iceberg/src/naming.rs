//! The one Iceberg table naming: how a configured table name becomes an
//! Iceberg [`TableIdent`]. The sink, reconciliation and the `offload` program
//! all go through [`TableName::parse`], so a bare name means the same table
//! everywhere.

use iceberg::{NamespaceIdent, TableIdent};

use crate::IcebergSinkError;

/// The namespace of table names written without one (`trades` is
/// `offload.trades`). The default of
/// [`IcebergSinkConfig::default_namespace`](crate::IcebergSinkConfig::default_namespace).
pub const DEFAULT_NAMESPACE: &str = "offload";

/// Iceberg table names as configured: `namespace.table`,
/// `ns1.ns2.table`, or a bare `table` in a default namespace.
///
/// ```
/// use offload_sink_iceberg::{DEFAULT_NAMESPACE, TableName};
/// assert_eq!(TableName::parse("bronze.trades", DEFAULT_NAMESPACE)?.to_string(), "bronze.trades");
/// assert_eq!(TableName::parse("trades", DEFAULT_NAMESPACE)?.to_string(), "offload.trades");
/// assert_eq!(TableName::parse("a.b.t", "x")?.namespace().as_ref(), &["a", "b"]);
/// assert!(TableName::parse("a..t", DEFAULT_NAMESPACE).is_err());
/// # Ok::<(), offload_sink_iceberg::IcebergSinkError>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TableName;

impl TableName {
    /// Parses `text` (dot-separated, the last segment is the table) into an
    /// identifier; a name without a dot is put in `default_namespace` (itself
    /// dot-separated for nested namespaces). Empty segments are refused with
    /// [`IcebergSinkError::InvalidTableName`].
    pub fn parse(text: &str, default_namespace: &str) -> Result<TableIdent, IcebergSinkError> {
        let bad = |reason: &str| IcebergSinkError::InvalidTableName {
            name: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty name segment (expected `namespace.table`)"));
        }
        let table = parts.pop().ok_or_else(|| bad("empty"))?;
        if parts.is_empty() {
            parts = default_namespace.split('.').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(bad(&format!(
                    "the default namespace {default_namespace:?} has an empty segment"
                )));
            }
        }
        let ns = NamespaceIdent::from_strs(parts).map_err(|e| bad(&e.to_string()))?;
        Ok(TableIdent::new(ns, table.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents() {
        assert_eq!(TableName::parse("a.b", "d").unwrap().to_string(), "a.b");
        assert_eq!(TableName::parse("t", "d").unwrap().to_string(), "d.t");
        assert_eq!(
            TableName::parse("t", DEFAULT_NAMESPACE).unwrap().to_string(),
            "offload.t"
        );
        assert_eq!(
            TableName::parse("t", "x.y").unwrap().namespace().as_ref(),
            &["x", "y"]
        );
        let multi = TableName::parse("x.y.t", "d").unwrap();
        assert_eq!(
            multi.namespace().as_ref(),
            &vec!["x".to_string(), "y".to_string()]
        );
        assert_eq!(multi.name(), "t");
        for bad in ["a..b", "a.", ".a", ""] {
            assert!(
                matches!(
                    TableName::parse(bad, "d"),
                    Err(IcebergSinkError::InvalidTableName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(TableName::parse("t", "").is_err());
        assert!(TableName::parse("t", "a..b").is_err());
    }
}
