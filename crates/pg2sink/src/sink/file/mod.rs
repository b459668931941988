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
use crate::model::{Modification, Schema};

/// Write through to the file (without fsync) past this many buffered bytes,
/// so a huge transaction never sits in memory.
const WRITE_THROUGH_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    pub schemas_path: PathBuf,
    pub modifications_path: PathBuf,
}

pub struct FileSink {
    outputs: Vec<Output>,
    schemas: usize,
    modifications: usize,
    /// The last schema each file holds per table (`schema.table`).
    last_schema: HashMap<String, Value>,
    unflushed: usize,
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
        })
    }

    async fn append(
        &mut self,
        which: usize,
        value: &impl serde::Serialize,
    ) -> Result<(), SinkError> {
        let output = &mut self.outputs[which];
        let before = output.buffer.len();
        serde_json::to_writer(&mut output.buffer, value).map_err(|e| SinkError::Definite {
            context: "encoding a message as JSON".into(),
            source: Box::new(e),
        })?;
        output.buffer.push(b'\n');
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
        let table = schema.table().unwrap_or_default().to_string();
        if self.last_schema.get(&table) == Some(&schema.schema) {
            return Ok(());
        }
        self.append(self.schemas, schema).await?;
        self.last_schema.insert(table, schema.schema.clone());
        Ok(())
    }

    async fn write_modification(&mut self, modification: &Modification) -> Result<(), SinkError> {
        self.append(self.modifications, modification).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        for output in &mut self.outputs {
            output.write_out(true).await?;
        }
        self.unflushed = 0;
        Ok(())
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }
}

impl Output {
    fn open(path: &Path) -> Result<Output, SinkError> {
        let fail = |what: &str, e: io::Error| SinkError::Definite {
            context: format!("{what} {}", path.display()),
            source: Box::new(e),
        };
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
        .map_err(|e| SinkError::Definite {
            context: "file writer task".into(),
            source: Box::new(e),
        })?;
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
        if let Some(table) = schema.get("namespace").and_then(Value::as_str) {
            last.insert(table.to_string(), schema);
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{format_timestamp_for_tests, Lsn, Op};

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
        };
        let schema = Schema {
            timestamp: format_timestamp_for_tests(),
            schema: serde_json::json!({"namespace": "public.t"}),
        };
        let m = Modification {
            timestamp: format_timestamp_for_tests(),
            lsn: Lsn(1),
            sequence: 1,
            op: Op::Insert,
            namespace: "public".into(),
            name: "t".into(),
            before: None,
            after: None,
            unchanged: vec![],
        };
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
}
