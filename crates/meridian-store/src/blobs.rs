//! Instance files through `object_store`, durable before acknowledgement.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::StoreError;

/// The object store holding instance files.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<LocalFileSystem>,
    root: PathBuf,
    fsync: bool,
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
        })
    }

    fn loc(key: &str) -> ObjPath {
        ObjPath::from(key)
    }

    /// Writes a file and makes it durable: the object store writes a temporary
    /// file and renames it; we then fsync the file and every directory up to the
    /// root so the name survives a crash.
    pub async fn put_durable(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let loc = Self::loc(key);
        self.store.put(&loc, PutPayload::from_bytes(data)).await?;
        if self.fsync {
            let path = self.store.path_to_filesystem(&loc)?;
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || sync_path_and_parents(&path, &root))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        }
        Ok(())
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

fn sync_path_and_parents(path: &Path, root: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path)?.sync_all()?;
    // Directories created for this key (study/series) need their entries durable too.
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
