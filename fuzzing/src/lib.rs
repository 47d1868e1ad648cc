//! What each fuzz target does with its input: every parser that reads bytes
//! from outside the process. `fuzz/` runs these under libFuzzer (`cargo
//! fuzz run TARGET`); `tests/corpora.rs` replays the committed corpora and
//! random mutations of them on stable, as part of the test suite.
//!
//! A target returns nothing: it fails only by panicking, aborting, or
//! allocating past libFuzzer's `-malloc_limit_mb`.

use propagator::medium::MemDir;
use propagator::wire::{Frames, Request, Response};
use std::path::Path;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("plog", plog),
    ("copy_file", copy_file),
    ("journal", journal),
    ("topology", topology),
    ("predicate", predicate),
    ("flowchart", flowchart),
    ("exec_line", exec_line),
];

/// The frame decoder, fed the input in pieces as a socket would (the first
/// byte picks the piece size), and every frame it yields decoded as a
/// request and as a response (every message type).
pub fn frames(data: &[u8]) {
    use tokio_util::codec::Decoder;
    let mut codec = Frames::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let piece = 1 + data.first().copied().unwrap_or(0) as usize % 61;
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Ok(r) = Request::decode(&frame) {
                        // What decodes encodes again.
                        let _ = r.encode();
                    }
                    let _ = Response::decode(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The protection-log reader. Odd first byte: the rest is a whole segment
/// file. Even: the rest is a run of entries (2-byte length, payload),
/// appended by the log's own writer (so their frames' checksums hold and
/// the entry decoder sees every payload), then one byte flipped where the
/// input's last two bytes say, and the segment read back.
pub fn plog(data: &[u8]) {
    use propagator::plog::format::segment_name;
    use propagator::plog::reader::{open_segments_readonly, LogScan};
    use propagator::DbId;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mem = MemDir::new();
    if mode & 1 == 1 {
        mem.insert(&segment_name(1), rest.to_vec());
    } else {
        if !write_entries(&mem, rest) {
            return;
        }
        if let (Some(name), [.., a, b]) = (Some(segment_name(1)), rest) {
            if let Some(mut bytes) = mem.bytes(&name) {
                let at = (usize::from(*a) << 8 | usize::from(*b)) % bytes.len().max(1);
                if let Some(x) = bytes.get_mut(at) {
                    *x ^= 0x5a;
                }
                mem.insert(&name, bytes);
            }
        }
    }
    let Ok(segs) = open_segments_readonly(&mem, DbId(1)) else {
        return;
    };
    let mut scan = LogScan::new(&segs, 0);
    for _ in 0..100_000 {
        match scan.next_frame() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

/// Appends `data`'s entries through the log writer; false if it refused.
fn write_entries(mem: &MemDir, data: &[u8]) -> bool {
    use propagator::plog::entry::Checkpoint;
    use propagator::plog::writer::PlogWriter;
    use propagator::{DbId, Lsn};
    let dir: std::sync::Arc<dyn propagator::medium::MediumDir> = std::sync::Arc::new(mem.clone());
    let checkpoint = Checkpoint {
        as_of: Lsn(0),
        time_us: 0,
        clean: false,
        catalog: Vec::new(),
        metas: Vec::new(),
    };
    let Ok(mut w) = PlogWriter::create_segment(dir, DbId(1), 1, &checkpoint, 16 << 10) else {
        return false;
    };
    let mut payloads = Vec::new();
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let n = (usize::from(*a) << 8 | usize::from(*b)).min(tail.len());
        payloads.push(&tail[..n]);
        rest = &tail[n..];
    }
    w.append(payloads.iter().copied()).is_ok()
}

/// The copy-file reader. Odd first byte: the rest is a copy file's bytes.
/// Even: the rest is a run of frame payloads (2-byte length, payload),
/// framed here as the writer frames them (magic, then length and CRC32C
/// per frame), so the frame decoder and the resolver see every payload.
pub fn copy_file(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let mut out = propagator::copy::COPY_MAGIC.to_vec();
        let mut rest = rest;
        while let [a, b, tail @ ..] = rest {
            let n = (usize::from(*a) << 8 | usize::from(*b)).min(tail.len());
            let len = (n as u32).to_le_bytes();
            let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &tail[..n]);
            out.extend_from_slice(&len);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&tail[..n]);
            rest = &tail[n..];
        }
        out
    };
    let mem = MemDir::new();
    let name = "00010-t.copy";
    mem.insert(name, bytes);
    let mut records = 0u64;
    let _ = propagator::copy::resolve(&mem, name, &mut |chunk| {
        records += chunk.len() as u64;
        Ok(())
    });
}

/// The client journal's frame scanner.
pub fn journal(data: &[u8]) {
    let _ = maintenance::journal::scan(Path::new("journal"), data);
}

/// The topology parser and its checks.
pub fn topology(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = propagator::topology::Valid::parse(text);
    }
}

/// A CEL predicate compiled (with the cost limit) and, if it compiles,
/// evaluated against a few records. The input is the source, then a NUL
/// and a record's bytes (MessagePack) to evaluate it on too.
pub fn predicate(data: &[u8]) {
    use propagator::predicate::Predicate;
    use propagator::{Record, Value};
    let (src, rec) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(src) = std::str::from_utf8(src) else {
        return;
    };
    let fields: Vec<String> = ["id", "grp", "qty", "name", "tags"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Ok(p) = Predicate::compile(src, &fields) else {
        return;
    };
    let mut records = Vec::new();
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(7));
    r.insert("grp".into(), Value::Int(-3));
    r.insert("qty".into(), Value::Float(2.5));
    r.insert("name".into(), Value::Text("é".into()));
    records.push(r);
    records.push(Record::new());
    if let Ok(r) = propagator::record::decode_record(rec) {
        records.push(r);
    }
    for r in &records {
        let _ = p.eval(r);
        let _ = p.selects(r);
    }
}

/// The flowchart (recovery tree) parser.
pub fn flowchart(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(tree) = flowcharts::Tree::parse(text, "fuzz") {
            let _ = flowcharts::validate(&tree, &flowcharts::Registry::standard());
            let _ = flowcharts::to_mermaid(&tree);
            let _ = flowcharts::to_dot(&tree);
        }
    }
}

/// `etp exec` lines, one per input line.
pub fn exec_line(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = propagator::exec::ExecCommand::parse(line);
        }
    }
}
