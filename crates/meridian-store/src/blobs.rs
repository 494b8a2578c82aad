//! Instance files through `object_store`, durable before acknowledgement.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::StoreError;

/// The object store holding instance files.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<LocalFileSystem>,
    root: PathBuf,
    fsync: bool,
    /// Directories whose entry in their parent is known to be durable.
    synced: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Blobs {
    /// A local filesystem store rooted at `root`.
    pub fn local(root: &Path, fsync: bool) -> Result<Blobs, StoreError> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let store = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Blobs {
            store: Arc::new(store),
            root,
            fsync,
            synced: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    fn loc(key: &str) -> ObjPath {
        ObjPath::from(key)
    }

    /// Writes a new object and makes it durable before returning: the file
    /// is created under its final (unique) key, written, fsynced, and its
    /// directory fsynced (and each newly created ancestor's parent, once).
    /// Blocking: call from a blocking thread.
    ///
    /// object_store's local put renames a temporary file and never fsyncs,
    /// so the local write is done here, at the same path object_store reads
    /// from; reads, listing and deletes go through object_store.
    pub fn put_durable_blocking(&self, key: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        use std::io::Write;
        let mut f = self.create_blocking(key)?;
        let written = parts.iter().try_for_each(|p| f.write_all(p));
        if let Err(e) = written {
            drop(f);
            self.remove_blocking(key);
            return Err(e.into());
        }
        self.finish_blocking(key, f, Early::default())
    }

    /// Creates the file of a new object under its final (unique) key, for
    /// the caller to write (e.g. while the data still arrives). Then
    /// [`Blobs::finish_blocking`] makes it durable, or
    /// [`Blobs::remove_blocking`] takes it away. Blocking.
    pub fn create_blocking(&self, key: &str) -> Result<std::fs::File, StoreError> {
        let path = self.store.path_to_filesystem(&Self::loc(key))?;
        let parent = path
            .parent()
            .ok_or_else(|| StoreError::BadKey(key.to_owned()))?;
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?)
    }

    /// Starts making the directory entries of a file just created with
    /// [`Blobs::create_blocking`] durable, on a blocking thread of the
    /// current tokio runtime, while the caller still writes the file (e.g.
    /// while its data arrives). [`Blobs::finish_blocking`] then waits for it
    /// instead of syncing the directories after the file. `None` without
    /// fsync or outside a runtime (the directories are synced at the end).
    ///
    /// Crash safety is unchanged: the index row is still committed only
    /// after both the file and its entry are durable. An entry made durable
    /// early for a file that is then abandoned names a file without an
    /// index row, which is what a crash during any write can leave, and
    /// which `fsck` reports and the abandoning writer removes.
    pub fn start_dir_sync(&self, key: &str) -> Option<EarlySync> {
        if !self.fsync {
            return None;
        }
        let path = self.store.path_to_filesystem(&Self::loc(key)).ok()?;
        let (root, synced) = (self.root.clone(), self.synced.clone());
        EarlySync::spawn(move || sync_parents(&path, &root, &synced))
    }

    /// Starts the fsync of a file from [`Blobs::create_blocking`] whose
    /// every byte is written, on a blocking thread, so that it overlaps
    /// what the caller still does before [`Blobs::finish_blocking`] (e.g.
    /// checking the data). `None` without fsync, outside a runtime, or if
    /// the descriptor cannot be duplicated (the file is synced at the end).
    pub fn start_file_sync(&self, file: &std::fs::File) -> Option<EarlySync> {
        if !self.fsync {
            return None;
        }
        let f = file.try_clone().ok()?;
        EarlySync::spawn(move || Ok(f.sync_all()?))
    }

    /// Makes a file from [`Blobs::create_blocking`] durable: the file, its
    /// directory, and each newly created ancestor's parent (once). A sync
    /// started early ([`Blobs::start_file_sync`], [`Blobs::start_dir_sync`])
    /// is waited for instead of done again; its failure is the file's (a
    /// failed fsync is not retried: the kernel may have dropped the pages it
    /// could not write). A file that cannot be made durable is removed.
    /// Blocking: call from a blocking thread, not from async code.
    pub fn finish_blocking(
        &self,
        key: &str,
        f: std::fs::File,
        early: Early,
    ) -> Result<(), StoreError> {
        if !self.fsync {
            return Ok(());
        }
        let synced = match early.file.and_then(EarlySync::wait) {
            Some(r) => r,
            None => f.sync_all().map_err(StoreError::from),
        };
        drop(f);
        let synced = synced.and_then(|()| match early.dirs.and_then(EarlySync::wait) {
            Some(r) => r,
            None => {
                let path = self.store.path_to_filesystem(&Self::loc(key))?;
                sync_parents(&path, &self.root, &self.synced)
            }
        });
        if synced.is_err() {
            self.remove_blocking(key);
        }
        synced
    }

    /// Removes an object's file if it is there (cleaning up after a failed
    /// or abandoned write). Blocking.
    pub fn remove_blocking(&self, key: &str) {
        if let Ok(path) = self.store.path_to_filesystem(&Self::loc(key)) {
            std::fs::remove_file(path).ok();
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.store.get(&Self::loc(key)).await?.bytes().await?)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        Ok(self.store.delete(&Self::loc(key)).await?)
    }

    /// Size of a stored object, `None` if it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.store.head(&Self::loc(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object key in the store.
    pub async fn list_all(&self) -> Result<Vec<String>, StoreError> {
        let list: Vec<_> = self.store.list(None).try_collect().await?;
        Ok(list.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// The filesystem path of a key (local store only), for tests and fsck tooling.
    pub fn local_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        Ok(self.store.path_to_filesystem(&Self::loc(key))?)
    }
}

/// Syncs of a file started before [`Blobs::finish_blocking`].
#[derive(Default)]
pub struct Early {
    /// The file's fsync ([`Blobs::start_file_sync`]).
    pub file: Option<EarlySync>,
    /// Its directory entries' ([`Blobs::start_dir_sync`]).
    pub dirs: Option<EarlySync>,
}

/// A sync under way on a blocking thread.
pub struct EarlySync(tokio::sync::oneshot::Receiver<Result<(), StoreError>>);

impl EarlySync {
    fn spawn(sync: impl FnOnce() -> Result<(), StoreError> + Send + 'static) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn_blocking(move || {
            tx.send(sync()).ok();
        });
        Some(EarlySync(rx))
    }

    /// Its outcome; `None` if it never ran (the runtime shut down).
    fn wait(self) -> Option<Result<(), StoreError>> {
        self.0.blocking_recv().ok()
    }
}

fn sync_parents(
    path: &Path,
    root: &Path,
    synced: &Mutex<HashSet<PathBuf>>,
) -> Result<(), StoreError> {
    // The file's own directory gained an entry: sync it every time. Its
    // ancestors (study, series) gain entries only when first created: sync
    // each of them once per process, marking only after the sync so a
    // concurrent store never skips a sync still under way.
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    std::fs::File::open(parent)?.sync_all()?;
    let mut dir = Some(parent);
    while let Some(d) = dir {
        if d == root {
            break;
        }
        let up = d.parent();
        if let Some(u) = up {
            let known = synced.lock().map(|s| s.contains(d)).unwrap_or(false);
            if !known {
                std::fs::File::open(u)?.sync_all()?;
                if let Ok(mut s) = synced.lock() {
                    s.insert(d.to_path_buf());
                }
            }
        }
        dir = up;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn no_early_sync_outside_a_runtime_or_without_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path(), true).unwrap();
        let f = blobs.create_blocking("a/b/c.dcm").unwrap();
        assert!(blobs.start_dir_sync("a/b/c.dcm").is_none());
        assert!(blobs.start_file_sync(&f).is_none());
        blobs
            .finish_blocking("a/b/c.dcm", f, Early::default())
            .unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _inside = runtime.enter();
        let unsynced = Blobs::local(&dir.path().join("nosync"), false).unwrap();
        assert!(unsynced.start_dir_sync("a/b/c.dcm").is_none());
        let g = unsynced.create_blocking("a/b/c.dcm").unwrap();
        assert!(unsynced.start_file_sync(&g).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_finished_after_its_syncs_started_early() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path(), true).unwrap();
        let key = "1.2/3.4/5.6.dcm";
        let mut f = blobs.create_blocking(key).unwrap();
        let dirs = blobs.start_dir_sync(key);
        assert!(dirs.is_some());
        let data = b"written while the directory is synced";
        f.write_all(data).unwrap();
        let file = blobs.start_file_sync(&f);
        assert!(file.is_some());
        let b = blobs.clone();
        let early = Early { file, dirs };
        tokio::task::spawn_blocking(move || b.finish_blocking(key, f, early))
            .await
            .unwrap()
            .unwrap();
        // The early sync marked the new ancestors as synced, as the late one would.
        let synced = blobs.synced.lock().unwrap().clone();
        assert!(synced.contains(&blobs.root.join("1.2/3.4")));
        assert!(synced.contains(&blobs.root.join("1.2")));
        assert_eq!(&blobs.get(key).await.unwrap()[..], data);
    }
}
