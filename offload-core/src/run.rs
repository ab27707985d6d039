//! Identity of one offload run.

use std::fmt;
use std::str::FromStr;

/// Unique id of one run of one table, recorded with its commit so that a commit
/// whose outcome is unknown can be looked up afterwards. Time-ordered (UUIDv7).
///
/// ```
/// use offload_core::RunId;
/// let a = RunId::new();
/// let b: RunId = a.to_string().parse().unwrap();
/// assert_eq!(a, b);
/// assert_ne!(a, RunId::new());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(uuid::Uuid);

impl RunId {
    /// A fresh id.
    #[allow(clippy::new_without_default)] // a default id would be a footgun
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7())
    }

    /// The UUID itself, e.g. to name files.
    ///
    /// ```
    /// let id = offload_core::RunId::new();
    /// assert_eq!(id.as_uuid().to_string(), id.to_string());
    /// ```
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// When the run started (to the millisecond), from the UUIDv7 timestamp:
    /// orphan cleanup uses it to leave young runs' files alone. `None` for an
    /// id that did not come from [`RunId::new`] (a foreign UUID parsed from text).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let id = offload_core::RunId::new();
    /// let age = SystemTime::now().duration_since(id.started_at().unwrap()).unwrap_or_default();
    /// assert!(age < Duration::from_secs(60));
    /// ```
    pub fn started_at(&self) -> Option<std::time::SystemTime> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.0)
    }
}

impl FromStr for RunId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(RunId)
            .map_err(|_| crate::Error::InvalidConfig {
                field: "run_id",
                reason: format!("{:?} is not a UUID", s.chars().take(64).collect::<String>()),
            })
    }
}
