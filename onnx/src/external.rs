//! External data (ONNX `docs/ExternalData.md`): a tensor whose
//! `data_location` is `EXTERNAL` keeps its bytes (what `raw_data` would
//! hold) in another file, named by its `external_data` entries `location`
//! (a path relative to the model file's folder), `offset` and `length`
//! (byte counts written as decimal strings; `offset` defaults to 0, and
//! `length` to the rest of the file). `checksum` and other keys are not
//! read.
//!
//! The folder is known while a model is imported from a file
//! ([`crate::import`]): the import enters a [`Scope`] for it, and every
//! tensor converted on that thread meanwhile (initializers, subgraphs'
//! initializers, tensor attributes such as a `Constant`'s value) reads its
//! external data relative to it. Without a scope (a model imported from
//! bytes) an external tensor is an error saying so.
//!
//! A `location` must stay inside the model's folder: it may not be
//! absolute, its `..` components may not leave the folder, and the file it
//! names, symbolic links resolved, must lie inside the folder (also
//! resolved). The file must be a regular file. Each file is memory-mapped
//! once per import (cached by its resolved path), so a file of any size is
//! read without being loaded; a tensor's bytes are checked to lie inside
//! the file and to be exactly as many as its dims and element type need
//! before anything is copied out of the mapping. As with any mapped file,
//! the file must not be truncated while the import reads it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::proto::TensorProto;

thread_local! {
    /// The external-data folder of the import running on this thread
    /// (`None`: no folder is known).
    static CURRENT: RefCell<Option<Rc<Folder>>> = const { RefCell::new(None) };
}

/// The external data of this thread's import until dropped: relative to
/// `folder`, or refused with `None` (the previous scope is restored on
/// drop).
pub(crate) struct Scope(Option<Rc<Folder>>);

impl Scope {
    /// Enters a scope reading external data relative to `folder` (a model
    /// file's folder; `""` is the current directory), or none.
    pub(crate) fn enter(folder: Option<&Path>) -> Scope {
        let folder = folder.map(|f| {
            Rc::new(Folder {
                path: if f.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    f.to_path_buf()
                },
                canonical: Default::default(),
                maps: Default::default(),
            })
        });
        Scope(CURRENT.with(|c| c.replace(folder)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A model's folder and the files mapped from it.
struct Folder {
    /// The folder as given.
    path: PathBuf,
    /// The folder with symbolic links resolved (found at first use).
    canonical: RefCell<Option<PathBuf>>,
    /// The files mapped so far, by resolved path.
    maps: RefCell<HashMap<PathBuf, Rc<Mapping>>>,
}

/// A mapped file (an empty file is not mapped).
enum Mapping {
    Empty,
    Mapped(memmap2::Mmap),
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        match self {
            Mapping::Empty => &[],
            Mapping::Mapped(m) => m,
        }
    }
}

/// A tensor's bytes in a mapped file.
pub(crate) struct Bytes {
    map: Rc<Mapping>,
    start: usize,
    len: usize,
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.start + self.len]
    }
}

/// The `external_data` entries of `t` that kiln reads.
struct Entries<'a> {
    location: &'a str,
    offset: u64,
    length: Option<u64>,
}

fn entries(t: &TensorProto) -> Result<Entries<'_>, String> {
    // A key given twice: the last one counts, as for ONNX's reader.
    let get = |key: &str| {
        t.external_data
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = get("location").ok_or_else(|| {
        "its data is stored in an external file, but its external_data has no location".to_string()
    })?;
    if location.is_empty() {
        return Err("its data is stored in an external file with an empty location".into());
    }
    let number = |key: &str| -> Result<Option<u64>, String> {
        get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    format!(
                        "the {key} {v:?} of its external data (file {location:?}) is not a byte count (a non-negative integer)"
                    )
                })
            })
            .transpose()
    };
    Ok(Entries {
        location,
        offset: number("offset")?.unwrap_or(0),
        length: number("length")?,
    })
}

/// `location` made a path under the model's folder, or an error if it is
/// absolute or its `..` components leave the folder.
fn relative(location: &str) -> Result<&Path, String> {
    let path = Path::new(location);
    let escapes = || {
        format!("its external data file {location:?} escapes the model's folder (the path must be relative to the folder and stay inside it)")
    };
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(escapes()),
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            Component::Normal(_) => depth += 1,
        }
    }
    Ok(path)
}

/// The bytes of external tensor `t`, which must be exactly `need` bytes
/// (what its dims and element type take in `raw_data`). Errors do not name
/// the tensor (the caller does); they name the file and the numbers.
pub(crate) fn read(t: &TensorProto, need: usize) -> Result<Bytes, String> {
    let e = entries(t)?;
    let location = e.location;
    let folder = CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        format!(
            "its data is stored in an external file ({location:?}), which is found relative to the model file's folder: import the model from its file path, not from bytes"
        )
    })?;
    let path = relative(location)?;
    let root = folder.canonical()?;
    let file = root.join(path);
    let resolved = file.canonicalize().map_err(|err| {
        let why = if err.kind() == std::io::ErrorKind::NotFound {
            "no such file".to_string()
        } else {
            err.to_string()
        };
        format!(
            "its external data file {location:?} ({}): {why}",
            file.display()
        )
    })?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "its external data file {location:?} escapes the model's folder: it resolves to {}, outside {}",
            resolved.display(),
            root.display()
        ));
    }
    let map = folder.map(&resolved, location)?;
    let size = map.bytes().len() as u64;
    let at = |what: String| format!("its external data {what} (file {location:?}, {size} bytes)");
    if e.offset > size {
        return Err(at(format!(
            "offset {} is beyond the end of the file",
            e.offset
        )));
    }
    let length = match e.length {
        Some(length) => {
            if e.offset.checked_add(length).is_none_or(|end| end > size) {
                return Err(at(format!(
                    "at offset {} of length {length} runs past the end of the file",
                    e.offset
                )));
            }
            length
        }
        None => size - e.offset,
    };
    if length != need as u64 {
        let given = if e.length.is_some() {
            "length"
        } else {
            "the rest of the file"
        };
        return Err(at(format!(
            "at offset {} has {length} bytes ({given}), but dims {:?} of {} need {need}",
            e.offset,
            t.dims,
            crate::tensor::onnx_type_name(t.data_type)
        )));
    }
    // Both fit in the mapping, so in a usize.
    Ok(Bytes {
        map,
        start: e.offset as usize,
        len: length as usize,
    })
}

impl Folder {
    /// The folder with symbolic links resolved.
    fn canonical(&self) -> Result<PathBuf, String> {
        if let Some(c) = &*self.canonical.borrow() {
            return Ok(c.clone());
        }
        let c = self.path.canonicalize().map_err(|e| {
            format!(
                "the model's folder {} (where its external data is): {e}",
                self.path.display()
            )
        })?;
        *self.canonical.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// The mapping of the regular file at `resolved` (named `location` in
    /// the model), mapped at first use.
    fn map(&self, resolved: &Path, location: &str) -> Result<Rc<Mapping>, String> {
        if let Some(m) = self.maps.borrow().get(resolved) {
            return Ok(m.clone());
        }
        let err = |e: String| {
            format!(
                "its external data file {location:?} ({}): {e}",
                resolved.display()
            )
        };
        let file = File::open(resolved).map_err(|e| err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file (a device, pipe or socket)"
            };
            return Err(err(format!("{what}: external data must be a regular file")));
        }
        let mapping = if meta.len() == 0 {
            Mapping::Empty
        } else {
            // SAFETY: the map is only read, as bytes. A file changed by
            // another process while mapped changes what is read; one
            // truncated while mapped faults the reader (see the module
            // doc), as for every reader of mapped files.
            let m = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| err(format!("cannot map it: {e}")))?;
            Mapping::Mapped(m)
        };
        let mapping = Rc::new(mapping);
        self.maps
            .borrow_mut()
            .insert(resolved.to_path_buf(), mapping.clone());
        Ok(mapping)
    }
}

/// The number of files this thread's import has mapped (tests).
#[cfg(test)]
pub(crate) fn mapped_files() -> usize {
    CURRENT.with(|c| c.borrow().as_ref().map_or(0, |f| f.maps.borrow().len()))
}
