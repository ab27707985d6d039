//! Listing the files under a table's location, with their ages, for orphan
//! removal: the local file system directly, S3 (feature `s3`) through
//! OpenDAL, since iceberg 0.10.1's `FileIO` cannot list. Other object stores
//! fail with [`IcebergSinkError::CleanupUnsupported`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::IcebergSinkError;
use crate::config::StorageConfig;
use crate::maintain::files::local_path;

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The file in the form references are compared in (`files::file_key`):
    /// a normalised local path, or the object's URL with the table
    /// location's scheme and bucket.
    pub(crate) key: String,
    /// When it was last written (object storage: its `LastModified`).
    pub(crate) modified: SystemTime,
    /// Listed under a data path outside the table location, which may be
    /// shared: only this sink's own data files there are candidates.
    pub(crate) own_only: bool,
}

impl Listed {
    /// The file name (the key's last segment).
    pub(crate) fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

/// Every file under the table `location` (and under `data_path`, the table's
/// `write.data.path`, when that lies outside it), hidden names left out.
///
/// Local tables are listed whole. On object storage only the location's
/// `data/` and `metadata/` prefixes are: what iceberg writes there is all a
/// table holds, and a prefix is not a directory (`.../t` would also match
/// `.../t2`), so nothing else under the location is assumed to be ours.
pub(crate) async fn list_table(
    location: &str,
    data_path: Option<&str>,
    storage: &StorageConfig,
) -> Result<Vec<Listed>, IcebergSinkError> {
    if let Some(root) = local_path(location) {
        let data_root = data_path.and_then(local_path).filter(|p| !p.starts_with(&root));
        return tokio::task::spawn_blocking(move || {
            let mut all: Vec<Listed> = local(&root, false)?;
            if let Some(data) = data_root {
                all.extend(local(&data, true)?);
            }
            Ok(all)
        })
        .await
        .map_err(|e| IcebergSinkError::WriterTask {
            reason: e.to_string(),
        })?;
    }
    object_storage(location, data_path, storage).await
}

fn local(root: &Path, own_only: bool) -> Result<Vec<Listed>, IcebergSinkError> {
    Ok(list_files(root)?
        .into_iter()
        .map(|(p, modified)| Listed {
            key: p.to_string_lossy().into_owned(),
            modified,
            own_only,
        })
        .collect())
}

#[cfg(feature = "s3")]
async fn object_storage(
    location: &str,
    data_path: Option<&str>,
    storage: &StorageConfig,
) -> Result<Vec<Listed>, IcebergSinkError> {
    let unsupported = |reason: &str| IcebergSinkError::CleanupUnsupported {
        location: location.to_owned(),
        reason: reason.to_owned(),
    };
    let table = s3::Prefix::parse(location)
        .ok_or_else(|| unsupported("only local file systems and S3 (s3://, s3a://, s3n://) can be listed"))?;
    let StorageConfig::S3(cfg) = storage else {
        return Err(unsupported("the catalog is not configured with S3 storage"));
    };
    let mut prefixes = vec![(table.child("data"), false), (table.child("metadata"), false)];
    if let Some(data) = data_path.and_then(s3::Prefix::parse) {
        let same_bucket = data.bucket == table.bucket;
        if !(same_bucket && data.dir().starts_with(&prefixes[0].0.dir())) {
            // Outside the table location a data path may be shared.
            let shared = !(same_bucket && data.dir().starts_with(&table.dir()));
            prefixes.push((data, shared));
        }
    }
    let mut out = Vec::new();
    for (prefix, own_only) in prefixes {
        out.extend(s3::list(cfg, &prefix, own_only).await?);
    }
    Ok(out)
}

#[cfg(not(feature = "s3"))]
async fn object_storage(
    location: &str,
    _data_path: Option<&str>,
    _storage: &StorageConfig,
) -> Result<Vec<Listed>, IcebergSinkError> {
    Err(IcebergSinkError::CleanupUnsupported {
        location: location.to_owned(),
        reason: "only local file-system warehouses can be listed (S3 needs the `s3` feature)".into(),
    })
}

#[cfg(feature = "s3")]
mod s3 {
    use futures::TryStreamExt;
    use opendal::{EntryMode, Operator};

    use super::{Listed, hidden};
    use crate::{IcebergSinkError, S3Config};

    /// An S3 location split into scheme, bucket and key prefix (no slashes
    /// at either end of the prefix).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Prefix {
        pub(super) scheme: String,
        pub(super) bucket: String,
        pub(super) path: String,
    }

    impl Prefix {
        pub(super) fn parse(location: &str) -> Option<Prefix> {
            let (scheme, rest) = location.split_once("://")?;
            if !matches!(scheme, "s3" | "s3a" | "s3n") {
                return None;
            }
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return None;
            }
            Some(Prefix {
                scheme: scheme.to_owned(),
                bucket: bucket.to_owned(),
                path: path.trim_matches('/').to_owned(),
            })
        }

        pub(super) fn child(&self, name: &str) -> Prefix {
            let path = if self.path.is_empty() {
                name.to_owned()
            } else {
                format!("{}/{name}", self.path)
            };
            Prefix { path, ..self.clone() }
        }

        /// The key prefix as a directory (`a/b/`), so `a/b` never matches `a/b2/...`.
        pub(super) fn dir(&self) -> String {
            if self.path.is_empty() {
                String::new()
            } else {
                format!("{}/", self.path)
            }
        }
    }

    /// An operator on `bucket` with the table storage's settings: the ones
    /// iceberg's OpenDAL storage derives from the same `s3.*` properties.
    fn operator(cfg: &S3Config, bucket: &str) -> Result<Operator, opendal::Error> {
        let mut b = opendal::services::S3::default().bucket(bucket).root("/");
        if let Some(v) = &cfg.endpoint {
            b = b.endpoint(v);
        }
        if let Some(v) = &cfg.region {
            b = b.region(v);
        }
        if let Some(v) = &cfg.access_key_id {
            b = b.access_key_id(v);
        }
        if let Some(v) = &cfg.secret_access_key {
            b = b.secret_access_key(v);
        }
        if let Some(v) = &cfg.session_token {
            b = b.session_token(v);
        }
        if !cfg.path_style_access {
            b = b.enable_virtual_host_style();
        }
        if cfg.allow_anonymous {
            b = b.skip_signature();
        }
        Ok(Operator::new(b)?.finish())
    }

    /// Every object under `prefix`, with its `LastModified`. An object the
    /// listing gives no date for is left out: its age is unknown, so it is
    /// never old enough to delete.
    pub(super) async fn list(
        cfg: &S3Config,
        prefix: &Prefix,
        own_only: bool,
    ) -> Result<Vec<Listed>, IcebergSinkError> {
        let dir = prefix.dir();
        let url = format!("{}://{}/{dir}", prefix.scheme, prefix.bucket);
        let err = |e: opendal::Error| {
            IcebergSinkError::iceberg(
                format!("list {url}"),
                iceberg::Error::new(iceberg::ErrorKind::Unexpected, "S3 listing failed").with_source(e),
            )
        };
        let op = operator(cfg, &prefix.bucket).map_err(err)?;
        let mut lister = op.lister_with(&dir).recursive(true).await.map_err(err)?;
        let mut out = Vec::new();
        while let Some(entry) = lister.try_next().await.map_err(err)? {
            let meta = entry.metadata();
            if meta.mode() != EntryMode::FILE {
                continue;
            }
            let path = entry.path().trim_start_matches('/');
            let below = path.strip_prefix(&dir).unwrap_or(path);
            if below.split('/').any(|c| hidden(std::ffi::OsStr::new(c))) {
                continue;
            }
            let Some(modified) = meta.last_modified() else {
                continue;
            };
            out.push(Listed {
                key: format!("{}://{}/{path}", prefix.scheme, prefix.bucket),
                modified: modified.into(),
                own_only,
            });
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn prefixes() {
            let p = Prefix::parse("s3://lake/wh/ns/t/").unwrap();
            assert_eq!(
                (p.scheme.as_str(), p.bucket.as_str(), p.path.as_str()),
                ("s3", "lake", "wh/ns/t")
            );
            assert_eq!(p.child("data").dir(), "wh/ns/t/data/");
            assert_eq!(Prefix::parse("s3a://lake").unwrap().dir(), "");
            assert_eq!(Prefix::parse("s3://lake").unwrap().child("data").dir(), "data/");
            assert_eq!(Prefix::parse("gs://lake/x"), None);
            assert_eq!(Prefix::parse("s3:///x"), None);
            assert_eq!(Prefix::parse("/tmp/x"), None);
        }
    }
}

/// Hidden names (`.x`, `_x`) that are not partition directories (`_k=v`):
/// skipped like Java's `DeleteOrphanFiles` skips them (checksums, other
/// tools' logs and markers).
fn hidden(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    (name.starts_with('.') || name.starts_with('_')) && !name.contains('=')
}

/// Every regular file under `root` with its modification time, hidden
/// files and directories left out.
pub(crate) fn list_files(root: &Path) -> Result<Vec<(PathBuf, SystemTime)>, IcebergSinkError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IcebergSinkError::io(format!("list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| IcebergSinkError::io(format!("list {}", dir.display()), e))?;
            if hidden(&entry.file_name()) {
                continue;
            }
            let ty = entry
                .file_type()
                .map_err(|e| IcebergSinkError::io(format!("stat {}", entry.path().display()), e))?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                let modified = match entry.metadata().and_then(|m| m.modified()) {
                    Ok(m) => m,
                    // Deleted meanwhile (another cleanup): nothing to do.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(IcebergSinkError::io(
                            format!("stat {}", entry.path().display()),
                            e,
                        ));
                    }
                };
                out.push((entry.path(), modified));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "data/ts_day=2024-03-01",
            "data/_k_bucket=3",
            "data/_tmp",
            "metadata",
            ".hoodie",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "data/ts_day=2024-03-01/a.parquet",
            "data/ts_day=2024-03-01/.a.parquet.crc",
            "data/_k_bucket=3/b.parquet",
            "data/_tmp/c.parquet",
            "data/_SUCCESS",
            "metadata/00001-x.metadata.json",
            ".hoodie/x",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let mut got: Vec<PathBuf> = list_files(root)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        got.sort();
        let want: Vec<PathBuf> = [
            "data/_k_bucket=3/b.parquet",
            "data/ts_day=2024-03-01/a.parquet",
            "metadata/00001-x.metadata.json",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn unlistable_locations_are_unsupported() {
        // Other object stores, and S3 without S3 settings (or without the feature).
        for loc in [
            "gs://b/wh/t",
            "abfss://c@acct.dfs.core.windows.net/t",
            "memory:///t",
            "s3://b/wh/t",
        ] {
            let err = list_table(loc, None, &StorageConfig::LocalFs).await.unwrap_err();
            assert!(
                matches!(err, IcebergSinkError::CleanupUnsupported { .. }),
                "{loc}: {err}"
            );
        }
    }

    #[test]
    fn names_are_last_segments() {
        let l = Listed {
            key: "s3://b/wh/t/data/x=1/a.parquet".into(),
            modified: SystemTime::UNIX_EPOCH,
            own_only: false,
        };
        assert_eq!(l.name(), "a.parquet");
    }
}
