//! Input checks shared by every store, so both refuse the same inputs the same way.

use std::time::Duration;

use crate::{MAX_DURATION, MAX_HOLDER_LEN, MAX_TABLE_NAME_LEN, StoreError};

/// Enough of a hostile or huge value to recognise it in an error message.
pub(crate) fn preview(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Any UTF-8 string is a valid table name (quotes, semicolons and all: names
/// are data, never spliced into paths or SQL) except the empty string, NUL
/// (PostgreSQL's `text` cannot hold it) and absurd lengths.
pub(crate) fn table_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::InvalidTableName {
        name: preview(name),
        reason,
    };
    if name.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if name.contains('\0') {
        return Err(bad("must not contain NUL".into()));
    }
    if name.len() > MAX_TABLE_NAME_LEN {
        return Err(bad(format!(
            "{} bytes is longer than the {MAX_TABLE_NAME_LEN} allowed",
            name.len()
        )));
    }
    Ok(())
}

/// Same rules as [`table_name`], for lease holder ids.
pub(crate) fn holder(holder: &str) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::InvalidHolder {
        holder: preview(holder),
        reason,
    };
    if holder.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if holder.contains('\0') {
        return Err(bad("must not contain NUL".into()));
    }
    if holder.len() > MAX_HOLDER_LEN {
        return Err(bad(format!(
            "{} bytes is longer than the {MAX_HOLDER_LEN} allowed",
            holder.len()
        )));
    }
    Ok(())
}

/// Refuses durations beyond [`MAX_DURATION`].
pub(crate) fn duration(what: &'static str, value: Duration) -> Result<(), StoreError> {
    if value > MAX_DURATION {
        return Err(StoreError::DurationOutOfRange {
            what,
            value,
            max: MAX_DURATION,
        });
    }
    Ok(())
}

/// Whole microseconds of a duration already checked by [`duration`] (or
/// saturated: run durations come from the engine and are only recorded).
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_fine_but_empty_nul_and_huge_are_not() {
        assert!(table_name("a'b;\"c` DROP TABLE x; --").is_ok());
        assert!(table_name("日本語").is_ok());
        for bad in ["", "a\0b"] {
            assert!(
                matches!(table_name(bad), Err(StoreError::InvalidTableName { .. })),
                "{bad:?}"
            );
        }
        let huge = "x".repeat(MAX_TABLE_NAME_LEN + 1);
        assert!(
            matches!(table_name(&huge), Err(StoreError::InvalidTableName { name, .. }) if name.len() == 64)
        );
        assert!(table_name(&huge[1..]).is_ok());
        assert!(matches!(holder(""), Err(StoreError::InvalidHolder { .. })));
        assert!(duration("ttl", MAX_DURATION).is_ok());
        assert!(matches!(
            duration("ttl", MAX_DURATION + Duration::from_micros(1)),
            Err(StoreError::DurationOutOfRange { what: "ttl", .. })
        ));
    }
}
