//! The file sink: one JSON object per line, schemas to one file and
//! modifications to another (or both to the same file, in order).
//!
//! Promises: existing files are appended to; a line torn by a crash is cut
//! off when the file is reopened (its transaction was never confirmed, so it
//! is sent again); `flush` returns only after `fsync`. A schema identical to
//! the last one the file holds for its table is not written again, so a
//! clean restart repeats nothing.
//!
//! Replays after a crash are harmless to a consumer that keeps, per table
//! and key, the change with the highest (`lsn`, `sequence`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{Sink, SinkError};
use crate::model::{ImportChunk, Modification, Schema};

/// Write through to the file (without fsync) past this many buffered bytes,
/// so a huge transaction never sits in memory.
const WRITE_THROUGH_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    pub schemas_path: PathBuf,
    pub modifications_path: PathBuf,
    /// Rotate the modifications file past this size (0: never).
    pub rotate_bytes: u64,
    /// Rotate the modifications file at least this often (if not empty).
    pub rotate_interval: Option<std::time::Duration>,
}

pub struct FileSink {
    outputs: Vec<Output>,
    schemas: usize,
    modifications: usize,
    /// The last schema each file holds per table (`schema.table`).
    last_schema: HashMap<String, Value>,
    unflushed: usize,
    rotate_bytes: u64,
    rotate_interval: Option<std::time::Duration>,
    /// When the current modifications file was started (or opened).
    file_started: std::time::Instant,
}

struct Output {
    path: PathBuf,
    file: Arc<File>,
    /// Only regular files can be fsynced; pipes and terminals cannot.
    regular: bool,
    buffer: Vec<u8>,
    /// Written to the file since the last fsync.
    dirty: bool,
}

impl FileSink {
    pub fn open(config: &FileSinkConfig) -> Result<FileSink, SinkError> {
        let mut outputs = vec![Output::open(&config.schemas_path)?];
        let modifications = match outputs[0].same_file_as(&config.modifications_path) {
            true => 0,
            false => {
                outputs.push(Output::open(&config.modifications_path)?);
                1
            }
        };
        let last_schema = match outputs[0].regular {
            true => read_last_schemas(&config.schemas_path)?,
            false => HashMap::new(),
        };
        Ok(FileSink {
            outputs,
            schemas: 0,
            modifications,
            last_schema,
            unflushed: 0,
            rotate_bytes: config.rotate_bytes,
            rotate_interval: config.rotate_interval,
            file_started: std::time::Instant::now(),
        })
    }

    /// Appends what `write` writes (whole lines) to output `which`.
    async fn append(
        &mut self,
        which: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SinkError> {
        let output = &mut self.outputs[which];
        let before = output.buffer.len();
        write(&mut output.buffer);
        self.unflushed += output.buffer.len() - before;
        if output.buffer.len() >= WRITE_THROUGH_BYTES {
            output.write_out(false).await?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        // The file sink publishes the Avro schema: rendered here, once, and
        // keyed by its namespace, as `read_last_schemas` finds it in the file.
        let avro = schema.avro();
        let table = avro_namespace(&avro).to_string();
        if self.last_schema.get(&table) == Some(&avro) {
            return Ok(());
        }
        self.append(self.schemas, |out| {
            // `Schema`'s JSON, from the schema rendered above. A struct of a
            // string and a JSON value always serialises.
            #[derive(serde::Serialize)]
            struct Line<'a> {
                timestamp: &'a str,
                schema: &'a serde_json::Value,
            }
            let line = Line {
                timestamp: &schema.timestamp,
                schema: &avro,
            };
            let _ = serde_json::to_writer(&mut *out, &line);
            out.push(b'\n');
        })
        .await?;
        self.last_schema.insert(table, avro);
        Ok(())
    }

    async fn write_modification(&mut self, modification: &Modification) -> Result<(), SinkError> {
        self.append(self.modifications, |out| {
            modification.write_json(out);
            out.push(b'\n');
        })
        .await
    }

    async fn write_import(&mut self, chunk: &ImportChunk) -> Result<(), SinkError> {
        self.append(self.modifications, |out| chunk.write_json_lines(out))
            .await
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        for output in &mut self.outputs {
            output.write_out(true).await?;
        }
        self.unflushed = 0;
        self.rotate_if_due()
    }
}

impl FileSink {
    /// Renames a full (or old) modifications file to `<path>.<first lsn>`
    /// and starts a new one. Runs only right after a flush, so every
    /// rotated file holds whole, durable lines.
    fn rotate_if_due(&mut self) -> Result<(), SinkError> {
        if self.rotate_bytes == 0 && self.rotate_interval.is_none() {
            return Ok(());
        }
        let output = &self.outputs[self.modifications];
        if !output.regular {
            return Ok(());
        }
        let fail = |what: &str, e: io::Error| SinkError::Transient {
            context: format!("{what} {}", output.path.display()),
            source: Box::new(e),
        };
        let size = output
            .file
            .metadata()
            .map_err(|e| fail("cannot stat", e))?
            .len();
        let by_size = self.rotate_bytes > 0 && size >= self.rotate_bytes;
        let by_time = self
            .rotate_interval
            .is_some_and(|i| self.file_started.elapsed() >= i)
            && size > 0;
        if !(by_size || by_time) {
            return Ok(());
        }
        let first = first_lsn(&output.path).unwrap_or_else(|| "0-0".to_string());
        let mut rotated = output.path.clone().into_os_string();
        rotated.push(format!(".{first}"));
        std::fs::rename(&output.path, &rotated).map_err(|e| fail("cannot rotate", e))?;
        if let Some(dir) = output.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("cannot sync the folder of", e))?;
        }
        tracing::info!(file = %std::path::Path::new(&rotated).display(), bytes = size, "rotated the modifications file");
        let path = output.path.clone();
        self.outputs[self.modifications] = Output::open(&path)?;
        self.file_started = std::time::Instant::now();
        Ok(())
    }
}

impl Output {
    fn open(path: &Path) -> Result<Output, SinkError> {
        let fail =
            |what: &str, e: io::Error| SinkError::definite(format!("{what} {}", path.display()), e);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .or_else(|_| OpenOptions::new().create(true).append(true).open(path))
            .map_err(|e| fail("cannot open", e))?;
        let regular = file
            .metadata()
            .map_err(|e| fail("cannot stat", e))?
            .is_file();
        if regular {
            cut_torn_line(&mut file).map_err(|e| fail("cannot repair the end of", e))?;
        }
        Ok(Output {
            path: path.to_path_buf(),
            file: Arc::new(file),
            regular,
            buffer: Vec::new(),
            dirty: false,
        })
    }

    fn same_file_as(&self, other: &Path) -> bool {
        if self.path == other {
            return true;
        }
        match (self.file.metadata(), std::fs::metadata(other)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Writes the buffer to the file, then fsyncs if asked (and possible).
    async fn write_out(&mut self, sync: bool) -> Result<(), SinkError> {
        if self.buffer.is_empty() && !(sync && self.dirty) {
            return Ok(());
        }
        let file = Arc::clone(&self.file);
        let buffer = std::mem::take(&mut self.buffer);
        let fsync = sync && self.regular;
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut f: &File = &file;
            f.write_all(&buffer)?;
            if fsync {
                f.sync_data()?;
            }
            Ok::<_, io::Error>(buffer)
        })
        .await
        .map_err(|e| SinkError::definite("file writer task", e))?;
        match result {
            Ok(mut buffer) => {
                buffer.clear();
                self.buffer = buffer;
                self.dirty = !sync;
                Ok(())
            }
            // Disk full, I/O errors: the data stays unconfirmed, so stopping
            // loses nothing; a restart writes it again.
            Err(e) => Err(SinkError::Transient {
                context: format!("writing {}", path.display()),
                source: Box::new(e),
            }),
        }
    }
}

/// A crash can leave a partial last line; it was never confirmed, so it is
/// cut and will be written again whole.
fn cut_torn_line(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(pos) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + pos as u64 + 1;
            if keep != len {
                tracing::warn!(
                    bytes = len - keep,
                    "cutting a torn last line left by a crash"
                );
                file.set_len(keep)?;
            }
            return Ok(());
        }
        if start == 0 {
            tracing::warn!(bytes = len, "cutting a torn first line left by a crash");
            return file.set_len(0);
        }
        end = start;
    }
}

/// The `lsn` of a file's first line, as `X-X` (a file name cannot hold `/`).
fn first_lsn(path: &Path) -> Option<String> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut line)
        .ok()?;
    let message: Value = serde_json::from_str(&line).ok()?;
    Some(message.get("lsn")?.as_str()?.replace('/', "-"))
}

fn read_last_schemas(path: &Path) -> Result<HashMap<String, Value>, SinkError> {
    let mut last = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(_) => return Ok(last),
    };
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        // Modifications may share the file; only schema lines matter here.
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(schema) = message.remove("schema") else {
            continue;
        };
        let table = avro_namespace(&schema).to_string();
        if !table.is_empty() {
            last.insert(table, schema);
        }
    }
    Ok(last)
}

/// A written schema's key: its Avro namespace, unique per table.
fn avro_namespace(avro: &Value) -> &str {
    avro.get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{format_timestamp_for_tests, Lsn, Op};

    /// The first change of a transaction committed at `lsn`.
    fn insert_at(lsn: Lsn) -> Modification {
        Modification {
            timestamp: format_timestamp_for_tests(),
            lsn,
            sequence: 1,
            op: Op::Insert,
            namespace: "public".into(),
            name: "t".into(),
            before: None,
            after: None,
            unchanged: vec![],
        }
    }

    #[test]
    fn torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        cut_torn_line(&mut f).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
        std::fs::write(&path, "no newline at all").unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        cut_torn_line(&mut f).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[tokio::test]
    async fn same_file_keeps_order_and_skips_repeated_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.jsonl");
        let config = FileSinkConfig {
            schemas_path: path.clone(),
            modifications_path: path.clone(),
            rotate_bytes: 0,
            rotate_interval: None,
        };
        let schema = Schema {
            timestamp: format_timestamp_for_tests().to_string(),
            table: std::sync::Arc::new(crate::model::Table {
                id: crate::model::RelationId(1),
                namespace: "public".into(),
                name: "t".into(),
                columns: vec![],
            }),
        };
        let m = insert_at(Lsn(1));
        let mut sink = FileSink::open(&config).unwrap();
        sink.write_schema(&schema).await.unwrap();
        sink.write_modification(&m).await.unwrap();
        sink.write_schema(&schema).await.unwrap();
        sink.flush().await.unwrap();
        drop(sink);
        let mut sink = FileSink::open(&config).unwrap();
        sink.write_schema(&schema).await.unwrap();
        sink.flush().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("\"schema\""));
        assert!(lines[1].contains("\"sequence\":1"));
    }

    #[tokio::test]
    async fn rotates_by_size_naming_files_by_their_first_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            schemas_path: dir.path().join("s.jsonl"),
            modifications_path: dir.path().join("m.jsonl"),
            rotate_bytes: 1,
            rotate_interval: None,
        };
        let mut sink = FileSink::open(&config).unwrap();
        for lsn in [0x10u64, 0x20] {
            sink.write_modification(&insert_at(Lsn(lsn))).await.unwrap();
            sink.flush().await.unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["m.jsonl", "m.jsonl.0-10", "m.jsonl.0-20", "s.jsonl"]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("m.jsonl")).unwrap(),
            ""
        );
    }
}
