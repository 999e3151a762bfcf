//! The `.kiln` file: one safetensors file holding the graph and its weights.
//!
//! Layout: a standard safetensors file. Its `__metadata__` has exactly one
//! key, `kiln`, whose value is the JSON [`FileHeader`] (format name, version,
//! nodes in topological order with inputs as indices, outputs, and the
//! CRC-32C of every tensor's bytes). Every constant and variable is a
//! tensor named after its node, so any safetensors tool reads the weights.
//! Loading executes nothing: it reads regular files only, no more bytes
//! than the file holds, parses, checks every declared size against the
//! file and every tensor against its checksum (files written before
//! checksums load unchecked), re-infers every node's type and compares it
//! with the stored one. Saving is deterministic, so
//! save -> load -> save gives identical bytes, and atomic (temp file, fsync,
//! rename), so a failed save never damages an existing file.

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::error::{Error, FileErrorKind, Result, SourceLoc};
use crate::graph::{Graph, NodeId};
use crate::op::{Op, Weight};
use crate::shape::TensorType;

mod crc32c;
pub(crate) mod float;
pub use crc32c::crc32c;

/// The format name stored in every file.
pub const FORMAT_NAME: &str = "kiln-graph";
/// The newest format version this build writes and reads. Version 2 added
/// dims that are expressions (`{"expr": "batch*seq"}`) and symbolic
/// constants; a graph without them is written as version 1, which every
/// kiln reads.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest version that holds `g`: 2 where a type has an expression dim
/// or a node is a symbolic constant (in `g` or its functions), else 1.
fn version_needed(g: &Graph) -> u32 {
    let newer = g.topo_order().into_iter().any(|id| {
        let n = g.node(id);
        matches!(n.op, crate::op::Op::SymbolicConstant { .. })
            || n.ty
                .shape
                .dims()
                .iter()
                .any(|d| matches!(d, crate::shape::Dim::Expr(_)))
    });
    if newer || g.functions().iter().any(|f| version_needed(&f.graph) > 1) {
        2
    } else {
        1
    }
}
/// What every kiln file has right after the 8-byte safetensors header length.
const MAGIC: &[u8] = br#"{"__metadata__":{"kiln":""#;

/// The JSON document stored in the file's metadata.
#[derive(Serialize, Deserialize, Debug)]
pub struct FileHeader {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version.
    pub version: u32,
    /// The kiln that wrote the file.
    pub producer: String,
    /// Nodes in topological order.
    pub nodes: Vec<FileNode>,
    /// Indices of the graph's outputs.
    pub outputs: Vec<usize>,
    /// Functions control-flow ops call (absent when there are none). Their
    /// weights are tensors named `__fn{i}/{node}` (nested: `__fn{i}/__fn{j}/...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FileFunction>,
    /// The CRC-32C of each tensor's bytes, by tensor name, as 8 hex digits
    /// (see [`checksums`]). Absent in files written before kiln kept them;
    /// older readers ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub crc32c: BTreeMap<String, String>,
}

/// A function as stored in a file.
#[derive(Serialize, Deserialize, Debug)]
pub struct FileFunction {
    /// Nodes in topological order.
    pub nodes: Vec<FileNode>,
    /// Indices of the parameter placeholders.
    pub params: Vec<usize>,
    /// Indices of the results.
    pub results: Vec<usize>,
    /// Functions its own control-flow ops call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FileFunction>,
}

/// A graph's nodes in topological order as file nodes, with their indices;
/// weights are collected under `prefix`.
fn file_nodes<'a>(
    g: &'a Graph,
    prefix: &str,
    weights: &mut Vec<(String, &'a Array)>,
) -> (Vec<FileNode>, HashMap<NodeId, usize>) {
    let order = g.topo_order();
    let index: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut nodes = Vec::with_capacity(order.len());
    for &id in &order {
        let n = g.node(id);
        if let Op::Constant { value: w } | Op::Variable { init: w, .. } = &n.op {
            weights.push((format!("{prefix}{}", n.name), &*w.0));
        }
        nodes.push(FileNode {
            name: n.name.clone(),
            op: n.op.clone(),
            inputs: g.inputs(id).iter().map(|i| index[i]).collect(),
            ty: n.ty.clone(),
            location: n.location.clone(),
        });
    }
    (nodes, index)
}

/// A graph's functions as file functions, recursively.
fn file_functions<'a>(
    g: &'a Graph,
    prefix: &str,
    weights: &mut Vec<(String, &'a Array)>,
) -> Vec<FileFunction> {
    g.functions()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = format!("{prefix}__fn{i}/");
            let functions = file_functions(&f.graph, &p, weights);
            let (nodes, index) = file_nodes(&f.graph, &p, weights);
            FileFunction {
                nodes,
                params: f.params.iter().map(|n| index[n]).collect(),
                results: f.results.iter().map(|n| index[n]).collect(),
                functions,
            }
        })
        .collect()
}

/// One node as stored in a file.
#[derive(Serialize, Deserialize, Debug)]
pub struct FileNode {
    /// Unique node name (also the tensor name of its weight, if any).
    pub name: String,
    /// The op and its attributes.
    #[serde(flatten)]
    pub op: Op,
    /// Indices of the input nodes (each smaller than this node's index).
    pub inputs: Vec<usize>,
    /// The output type, re-checked on load.
    #[serde(rename = "type")]
    pub ty: TensorType,
    /// Where the node was defined.
    pub location: SourceLoc,
}

struct WeightView<'a>(&'a Array);

impl View for WeightView<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.dtype() {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::I32 => Dtype::I32,
            DType::I64 => Dtype::I64,
            DType::I8 => Dtype::I8,
            DType::I16 => Dtype::I16,
            DType::U8 => Dtype::U8,
            DType::U16 => Dtype::U16,
            DType::U32 => Dtype::U32,
            DType::U64 => Dtype::U64,
            DType::Bool => Dtype::BOOL,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data().to_le_bytes())
    }
    fn data_len(&self) -> usize {
        self.0.size_bytes()
    }
}

fn from_st_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::U8 => DType::U8,
        Dtype::U16 => DType::U16,
        Dtype::U32 => DType::U32,
        Dtype::U64 => DType::U64,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

impl Graph {
    /// Serializes the graph and its weights to the bytes of a `.kiln` file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut weights: Vec<(String, &Array)> = Vec::new();
        let functions = file_functions(self, "", &mut weights);
        let (nodes, index) = file_nodes(self, "", &mut weights);
        let refs: Vec<(&str, &Array)> = weights.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let header = FileHeader {
            format: FORMAT_NAME.into(),
            version: version_needed(self),
            producer: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            nodes,
            outputs: self.outputs().iter().map(|o| index[o]).collect(),
            functions,
            crc32c: checksums(&refs),
        };
        let json = serde_json::to_string(&header)
            .map_err(|e| Error::InvalidGraph(format!("serializing: {e}")))?;
        tensors_to_bytes(&refs, "kiln", &json)
    }

    /// Writes the graph to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path.as_ref(), &bytes)
    }

    /// Reads a graph from `.kiln` bytes; `origin` names the source in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Graph> {
        load(bytes, origin)
    }

    /// Reads a graph from a `.kiln` file (a regular file: see [`read_regular_file`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Graph> {
        let path = path.as_ref();
        let bytes = read_regular_file(path).map_err(|e| Error::io("reading", path, e))?;
        load(&bytes, &path.display().to_string())
    }
}

/// Reads the whole of the file at `path`, refusing anything that is not a
/// regular file — a directory, a device such as `/dev/zero` (endless), a
/// FIFO (blocks) — and reading no more bytes than the file's size when it
/// was opened, so a file that grows while being read cannot exhaust memory.
/// The error says what the path is instead.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    // Stat before opening: opening a FIFO would wait for a writer.
    refuse_irregular(&std::fs::metadata(path)?)?;
    let file = std::fs::File::open(path)?;
    // What was opened may have been swapped for something else since.
    let meta = file.metadata()?;
    refuse_irregular(&meta)?;
    let len = meta.len();
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("the file has {len} bytes, more than fit in memory"),
        )
    };
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).map_err(|_| too_big())?)
        .map_err(|_| too_big())?;
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// An error naming what `meta` describes unless it is a regular file.
fn refuse_irregular(meta: &std::fs::Metadata) -> std::io::Result<()> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let what = if t.is_dir() {
        "a directory"
    } else {
        irregular_kind(&t)
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    ))
}

#[cfg(unix)]
fn irregular_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn irregular_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// The CRC-32C of each tensor's little-endian bytes (as the file holds
/// them), by name, as 8 lowercase hex digits.
pub fn checksums(tensors: &[(&str, &Array)]) -> BTreeMap<String, String> {
    tensors
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                format!("{:08x}", crc32c(&a.data().to_le_bytes())),
            )
        })
        .collect()
}

/// Checks the bytes of tensor `name` against `expected` (a [`checksums`]
/// entry); the error detail names the tensor and both values.
pub fn verify_checksum(name: &str, data: &[u8], expected: &str) -> std::result::Result<(), String> {
    let got = crc32c(data);
    match u32::from_str_radix(expected, 16) {
        Ok(want) if expected.len() == 8 && want == got => Ok(()),
        Ok(_) if expected.len() == 8 => Err(format!(
            "tensor '{name}' is corrupt: its {} bytes have CRC-32C {got:08x}, the file records {expected}",
            data.len()
        )),
        _ => Err(format!(
            "tensor '{name}': checksum '{expected}' is not 8 hex digits"
        )),
    }
}

/// Reads a [`checksums`] map from JSON (`None` when absent); `Err` says
/// what is malformed.
pub fn checksums_from_json(
    v: Option<&serde_json::Value>,
) -> std::result::Result<Option<BTreeMap<String, String>>, String> {
    let Some(v) = v else { return Ok(None) };
    let map = v
        .as_object()
        .ok_or_else(|| format!("checksums: expected a map from tensor name to hex, got {v}"))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format!(
                "checksum of tensor '{k}': expected hex digits, got {v}"
            )),
        })
        .collect::<std::result::Result<_, _>>()
        .map(Some)
}

/// Serializes named arrays as a safetensors file whose metadata holds one
/// entry, `key: value` (one entry, so the bytes are deterministic).
pub fn tensors_to_bytes(tensors: &[(&str, &Array)], key: &str, value: &str) -> Result<Vec<u8>> {
    let views: Vec<(&str, WeightView<'_>)> =
        tensors.iter().map(|(n, a)| (*n, WeightView(a))).collect();
    let meta = HashMap::from([(key.to_string(), value.to_string())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::InvalidGraph(format!("serializing: {e}")))
}

/// Decodes one safetensors tensor into an array; `Err` says what is wrong.
fn decode(t: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Array, String> {
    let dtype = from_st_dtype(t.dtype())
        .ok_or_else(|| format!("unsupported tensor dtype {:?}", t.dtype()))?;
    let data =
        Data::from_le_bytes(dtype, t.data()).ok_or_else(|| format!("invalid {dtype} data"))?;
    Array::new(t.shape().to_vec(), data)
        .ok_or_else(|| "tensor size does not match its shape".to_string())
}

/// Reads every tensor of a safetensors file and its metadata entry `key`
/// (`None` when absent). When that entry is a JSON object with a `crc32c`
/// map (see [`checksums`]), every tensor is checked against it. Errors are
/// file errors naming `origin`.
pub fn tensors_from_bytes(
    bytes: &[u8],
    origin: &str,
    key: &str,
) -> Result<(std::collections::BTreeMap<String, Array>, Option<String>)> {
    let fail = |kind: FileErrorKind, detail: String| Error::File {
        path: origin.into(),
        kind,
        detail,
    };
    if let Some(detail) = header_overrun(bytes) {
        return Err(fail(FileErrorKind::Truncated, detail));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        if let Some((kind, detail)) = layout_problem(bytes, &e) {
            return fail(kind, detail);
        }
        let kind = match e {
            SafeTensorError::HeaderTooSmall
            | SafeTensorError::InvalidHeaderLength
            | SafeTensorError::MetadataIncompleteBuffer => FileErrorKind::Truncated,
            SafeTensorError::HeaderTooLarge
            | SafeTensorError::InvalidHeader(_)
            | SafeTensorError::InvalidHeaderDeserialization(_) => FileErrorKind::BadMagic,
            _ => FileErrorKind::Corrupt,
        };
        fail(kind, e.to_string())
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fail(FileErrorKind::Corrupt, e.to_string()))?;
    let value = meta.metadata().as_ref().and_then(|m| m.get(key)).cloned();
    let json = value
        .as_deref()
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
    let sums = checksums_from_json(json.as_ref().and_then(|j| j.get("crc32c")))
        .map_err(|d| fail(FileErrorKind::Corrupt, d))?;
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in st.tensors() {
        if let Some(sums) = &sums {
            let want = sums.get(&name).ok_or_else(|| {
                fail(
                    FileErrorKind::Corrupt,
                    format!("tensor '{name}' has no checksum"),
                )
            })?;
            verify_checksum(&name, t.data(), want).map_err(|d| fail(FileErrorKind::Corrupt, d))?;
        }
        let a = decode(&t)
            .map_err(|e| fail(FileErrorKind::Corrupt, format!("tensor '{name}': {e}")))?;
        out.insert(name, a);
    }
    if let Some(extra) = sums
        .iter()
        .flatten()
        .map(|(n, _)| n)
        .find(|n| !out.contains_key(*n))
    {
        return Err(fail(
            FileErrorKind::Corrupt,
            format!("the file records a checksum for tensor '{extra}', which it does not hold"),
        ));
    }
    Ok((out, value))
}

/// The complaint about a safetensors header whose declared length runs
/// past the end of `bytes` (a cut file, or a length that is garbage).
fn header_overrun(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let held = bytes.len() as u64 - 8;
    (n > held).then(|| format!("the header declares {n} bytes, but only {held} follow its length"))
}

/// A precise account of safetensors' complaint `e` about `bytes`, where
/// its own message does not say which tensor or what is wrong: the tensor
/// whose shape overflows or disagrees with its `data_offsets`, or bytes
/// after the declared data (a damaged file, not a truncated one). `None`
/// leaves the error as safetensors says it.
fn layout_problem(bytes: &[u8], e: &SafeTensorError) -> Option<(FileErrorKind, String)> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    let mut data_end = 0u64;
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for (name, info) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let shape: Vec<u64> = serde_json::from_value(info.get("shape")?.clone()).ok()?;
        let [start, end]: [u64; 2] =
            serde_json::from_value(info.get("data_offsets")?.clone()).ok()?;
        data_end = data_end.max(end);
        spans.push((start, end, name));
        if !matches!(
            e,
            SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow
        ) {
            continue;
        }
        let bits = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|count| count.checked_mul(dtype.bitsize() as u64))
            .filter(|&b| b / 8 <= isize::MAX as u64);
        let Some(bits) = bits else {
            return Some((
                FileErrorKind::Corrupt,
                format!(
                    "tensor '{name}': shape {shape:?} of {dtype:?} has more bytes than fit in memory"
                ),
            ));
        };
        // (Offsets that run backwards are `InvalidOffset`, which names the tensor.)
        let held = end.saturating_sub(start);
        if bits % 8 == 0 && held != bits / 8 {
            return Some((
                FileErrorKind::Corrupt,
                format!(
                    "tensor '{name}': shape {shape:?} of {dtype:?} needs {} bytes, \
                     but its data_offsets [{start}, {end}] hold {held}",
                    bits / 8,
                ),
            ));
        }
    }
    if matches!(e, SafeTensorError::InvalidOffset(_)) {
        // Data must be packed in offset order; name where it is not.
        spans.sort_unstable();
        let mut end = 0;
        for (s, e, name) in spans {
            if s > end {
                return Some((
                    FileErrorKind::Corrupt,
                    format!(
                        "bytes {end}..{s} of the data belong to no tensor (they come before \
                         tensor '{name}'): was a tensor's entry removed from the header?"
                    ),
                ));
            }
            if s < end {
                return Some((
                    FileErrorKind::Corrupt,
                    format!("tensor '{name}' at bytes {s}..{e} overlaps the tensor before it"),
                ));
            }
            end = e;
        }
    }
    if matches!(e, SafeTensorError::MetadataIncompleteBuffer) {
        let declared = (8 + n as u64).checked_add(data_end)?;
        if (bytes.len() as u64) > declared {
            return Some((
                FileErrorKind::Corrupt,
                format!(
                    "{} bytes after the end of the data the header declares \
                     (the file has {} bytes, the data ends at byte {declared})",
                    bytes.len() as u64 - declared,
                    bytes.len()
                ),
            ));
        }
    }
    None
}

/// Writes `bytes` to `path` through a temp file in the same directory,
/// fsyncs it and renames it over `path`, so readers see the old or the new
/// file, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::io("writing", path, e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn load(bytes: &[u8], origin: &str) -> Result<Graph> {
    let fail = |kind: FileErrorKind, detail: String| Error::File {
        path: origin.into(),
        kind,
        detail,
    };
    if bytes.len() < 8 {
        return Err(fail(
            FileErrorKind::Truncated,
            format!(
                "{} bytes; a kiln file has at least {}",
                bytes.len(),
                8 + MAGIC.len()
            ),
        ));
    }
    let after = &bytes[8..];
    let k = after.len().min(MAGIC.len());
    if after[..k] != MAGIC[..k] {
        let what = if after.first() == Some(&b'{') {
            "a safetensors file without a kiln graph"
        } else {
            "not a safetensors file"
        };
        return Err(fail(FileErrorKind::BadMagic, what.into()));
    }
    if let Some(detail) = header_overrun(bytes) {
        return Err(fail(FileErrorKind::Truncated, detail));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        if let Some(detail) = missing_weight(bytes) {
            return fail(FileErrorKind::Corrupt, detail);
        }
        if let Some((kind, detail)) = layout_problem(bytes, &e) {
            return fail(kind, detail);
        }
        let kind = match e {
            SafeTensorError::HeaderTooSmall
            | SafeTensorError::InvalidHeaderLength
            | SafeTensorError::MetadataIncompleteBuffer => FileErrorKind::Truncated,
            _ => FileErrorKind::Corrupt,
        };
        let detail = match kind {
            FileErrorKind::Truncated => format!(
                "the file ends before the data it declares ({e}; {} bytes)",
                bytes.len()
            ),
            _ => format!("invalid safetensors layout: {e}"),
        };
        fail(kind, detail)
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fail(FileErrorKind::Corrupt, e.to_string()))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("kiln"))
        .ok_or_else(|| {
            fail(
                FileErrorKind::BadMagic,
                "no kiln graph in the metadata".into(),
            )
        })?;
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| fail(FileErrorKind::Corrupt, format!("graph JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
        return Err(fail(
            FileErrorKind::BadMagic,
            format!("metadata does not declare format \"{FORMAT_NAME}\""),
        ));
    }
    let version = value
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| fail(FileErrorKind::Corrupt, "no format version".into()))?;
    if version > FORMAT_VERSION as u64 || version == 0 {
        let producer = value
            .get("producer")
            .and_then(|p| p.as_str())
            .unwrap_or("an unknown producer");
        return Err(fail(
            FileErrorKind::UnsupportedVersion,
            format!("format version {version} (written by {producer}); this kiln reads versions 1 to {FORMAT_VERSION}"),
        ));
    }
    let nodes = value
        .get("nodes")
        .and_then(|n| n.as_array())
        .ok_or_else(|| fail(FileErrorKind::Corrupt, "no node list".into()))?;
    let sums =
        checksums_from_json(value.get("crc32c")).map_err(|d| fail(FileErrorKind::Corrupt, d))?;
    let tensors = Tensors {
        st: &st,
        sums: sums.as_ref(),
    };
    let mut graph = Graph::new();
    let mut used_tensors = HashSet::new();
    load_functions(&mut graph, &value, &tensors, "", &mut used_tensors, &fail)?;
    let ids = load_nodes(&mut graph, nodes, &tensors, "", &mut used_tensors, &fail)?;
    if let Some(extra) = st.names().into_iter().find(|n| !used_tensors.contains(*n)) {
        return Err(fail(
            FileErrorKind::Corrupt,
            format!("tensor '{extra}' belongs to no node"),
        ));
    }
    if let Some(extra) = sums
        .iter()
        .flatten()
        .map(|(n, _)| n)
        .find(|n| !used_tensors.contains(*n))
    {
        return Err(fail(
            FileErrorKind::Corrupt,
            format!("the file records a checksum for tensor '{extra}', which it does not hold"),
        ));
    }
    let outputs = value
        .get("outputs")
        .and_then(|o| o.as_array())
        .ok_or_else(|| fail(FileErrorKind::Corrupt, "no output list".into()))?;
    let mut out_ids = Vec::with_capacity(outputs.len());
    for o in outputs {
        let k = o
            .as_u64()
            .filter(|&k| (k as usize) < ids.len())
            .ok_or_else(|| fail(FileErrorKind::Corrupt, format!("output {o} is not a node")))?;
        out_ids.push(ids[k as usize]);
    }
    graph.set_outputs(out_ids)?;
    Ok(graph)
}

/// The first weight tensor that the graph JSON in `bytes` needs and the
/// safetensors header does not list (an entry removed by hand or by damage,
/// which safetensors reports as a bad offset of the next tensor), as an
/// error detail; `None` when every weight is listed or the file is too
/// damaged to tell.
fn missing_weight(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    let graph: serde_json::Value =
        serde_json::from_str(entries.get("__metadata__")?.get("kiln")?.as_str()?).ok()?;
    fn weights(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        for (i, f) in v
            .get("functions")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            weights(f, &format!("{prefix}__fn{i}/"), out);
        }
        for node in v
            .get("nodes")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            let op = node.get("op").and_then(|o| o.as_str());
            if let (Some("constant" | "variable"), Some(name)) =
                (op, node.get("name").and_then(|n| n.as_str()))
            {
                out.push(format!("{prefix}{name}"));
            }
        }
    }
    let mut needed = Vec::new();
    weights(&graph, "", &mut needed);
    let missing = needed.into_iter().find(|w| !entries.contains_key(w))?;
    Some(format!(
        "tensor '{missing}' is missing from the safetensors header, but node '{missing}' needs it"
    ))
}

/// The tensors of a file being loaded and their recorded checksums
/// (`None` in files written before kiln kept them).
struct Tensors<'a> {
    st: &'a SafeTensors<'a>,
    sums: Option<&'a BTreeMap<String, String>>,
}

/// Adds a graph's nodes from their file form; returns their ids in order.
fn load_nodes(
    graph: &mut Graph,
    nodes: &[serde_json::Value],
    tensors: &Tensors<'_>,
    prefix: &str,
    used_tensors: &mut HashSet<String>,
    fail: &dyn Fn(FileErrorKind, String) -> Error,
) -> Result<Vec<NodeId>> {
    let mut ids: Vec<NodeId> = Vec::with_capacity(nodes.len());
    for (i, raw) in nodes.iter().enumerate() {
        let label = || {
            format!(
                "node {i} '{}'",
                raw.get("name").and_then(|n| n.as_str()).unwrap_or("?")
            )
        };
        let node: FileNode = serde_json::from_value(raw.clone()).map_err(|e| {
            let op = raw.get("op").and_then(|o| o.as_str()).unwrap_or("?");
            if e.to_string().contains("unknown variant")
                && serde_json::from_value::<Op>(serde_json::json!({"op": op}))
                    .is_err_and(|e| e.to_string().contains("unknown variant"))
            {
                fail(
                    FileErrorKind::Corrupt,
                    format!(
                        "{} has unknown op '{op}' (written by a newer kiln?)",
                        label()
                    ),
                )
            } else {
                fail(FileErrorKind::Corrupt, format!("{}: {e}", label()))
            }
        })?;
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &k in &node.inputs {
            if k >= i {
                return Err(fail(
                    FileErrorKind::Corrupt,
                    format!("{} uses node {k}, which is not defined before it (a cycle or a dangling edge)", label()),
                ));
            }
            inputs.push(ids[k]);
        }
        let mut op = node.op;
        if let Op::Constant { value: w } | Op::Variable { init: w, .. } = &mut op {
            let tname = format!("{prefix}{}", node.name);
            let t = tensors.st.tensor(&tname).map_err(|_| {
                fail(
                    FileErrorKind::Corrupt,
                    format!("{} has no weight tensor '{tname}'", label()),
                )
            })?;
            if let Some(sums) = tensors.sums {
                let want = sums.get(&tname).ok_or_else(|| {
                    fail(
                        FileErrorKind::Corrupt,
                        format!("tensor '{tname}' has no checksum"),
                    )
                })?;
                verify_checksum(&tname, t.data(), want)
                    .map_err(|d| fail(FileErrorKind::Corrupt, d))?;
            }
            let arr = decode(&t)
                .map_err(|e| fail(FileErrorKind::Corrupt, format!("{}: {e}", label())))?;
            *w = Weight::new(arr);
            used_tensors.insert(tname);
        }
        let id = graph
            .add_node(&node.name, op, &inputs, node.location)
            .map_err(|e| fail(FileErrorKind::Corrupt, format!("{}: {e}", label())))?;
        if graph.node(id).ty != node.ty {
            return Err(fail(
                FileErrorKind::Corrupt,
                format!(
                    "{}: stored type {} differs from the inferred type {}",
                    label(),
                    node.ty,
                    graph.node(id).ty
                ),
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Adds the functions listed under `value["functions"]` (recursively) to `graph`.
fn load_functions(
    graph: &mut Graph,
    value: &serde_json::Value,
    tensors: &Tensors<'_>,
    prefix: &str,
    used_tensors: &mut HashSet<String>,
    fail: &dyn Fn(FileErrorKind, String) -> Error,
) -> Result<()> {
    let Some(list) = value.get("functions").and_then(|f| f.as_array()) else {
        return Ok(());
    };
    for (i, fv) in list.iter().enumerate() {
        let p = format!("{prefix}__fn{i}/");
        let mut fg = Graph::new();
        load_functions(&mut fg, fv, tensors, &p, used_tensors, fail)?;
        let nodes = fv.get("nodes").and_then(|n| n.as_array()).ok_or_else(|| {
            fail(
                FileErrorKind::Corrupt,
                format!("function {p}: no node list"),
            )
        })?;
        let ids = load_nodes(&mut fg, nodes, tensors, &p, used_tensors, fail)?;
        let pick = |key: &str| -> Result<Vec<NodeId>> {
            fv.get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| fail(FileErrorKind::Corrupt, format!("function {p}: no {key}")))?
                .iter()
                .map(|k| {
                    k.as_u64()
                        .and_then(|k| ids.get(k as usize).copied())
                        .ok_or_else(|| {
                            fail(
                                FileErrorKind::Corrupt,
                                format!("function {p}: {key} {k} is not a node"),
                            )
                        })
                })
                .collect()
        };
        let (params, results) = (pick("params")?, pick("results")?);
        if let Some(&bad) = params
            .iter()
            .find(|&&n| !matches!(fg.node(n).op, Op::Placeholder { .. }))
        {
            return Err(fail(
                FileErrorKind::Corrupt,
                format!(
                    "function {p}: parameter '{}' is not a placeholder",
                    fg.node(bad).name
                ),
            ));
        }
        graph.add_function(crate::graph::Function {
            graph: fg,
            params,
            results,
        });
    }
    Ok(())
}
